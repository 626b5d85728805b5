// A Go service that stores every session's payload in a package-level slice that is never pruned, while the
// request's scratch buffer is garbage. Arguments: sessions per second, seconds of activity, seconds to hold. Like
// many services it serves net/http/pprof (on a loopback port of the kernel's choosing), which keeps the runtime's
// heap profile on: Go's linker turns it off in programs that cannot reach runtime.MemProfile.
package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"strconv"
	"time"
)

const sessionBytes = 256 << 10

var store [][]byte

func leakIntoStore(id int) int {
	payload := make([]byte, sessionBytes)
	for i := range payload {
		payload[i] = byte(id + i)
	}
	store = append(store, payload)
	return len(payload)
}

func serve(id int) int {
	scratch := make([]byte, 16<<10)
	scratch[id%len(scratch)] = 1
	return leakIntoStore(id + int(scratch[0]))
}

func arg(i int, def int) int {
	if len(os.Args) > i {
		if v, err := strconv.Atoi(os.Args[i]); err == nil {
			return v
		}
	}
	return def
}

func main() {
	rate, secs, hold := arg(1, 40), arg(2, 7), arg(3, 120)
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		go http.Serve(l, nil)
	}
	start := time.Now()
	served := 0
	for time.Since(start) < time.Duration(secs)*time.Second {
		due := int(time.Since(start).Seconds() * float64(rate))
		for served < due {
			serve(served)
			served++
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Printf("%d sessions\n", len(store))
	time.Sleep(time.Duration(hold) * time.Second)
}
