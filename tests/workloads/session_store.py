# A Python service that remembers every session's payload in a module-level list that is never pruned, while the
# request's scratch buffer is dropped. Arguments: sessions per second, seconds of activity, seconds to hold.
import sys
import time

SESSION_BYTES = 256 * 1024
sessions = []


def remember(session_id):
    payload = bytes([session_id & 0xFF]) * SESSION_BYTES
    sessions.append(payload)
    return len(payload)


def handle_request(session_id):
    scratch = bytearray(16 * 1024)
    scratch[0] = 1
    return remember(session_id + scratch[0])


def main():
    rate, secs, hold = (int(a) for a in (sys.argv[1:4] + ["40", "7", "120"][len(sys.argv[1:4]):]))
    start = time.monotonic()
    served = 0
    while time.monotonic() - start < secs:
        due = int((time.monotonic() - start) * rate)
        while served < due:
            handle_request(served)
            served += 1
        time.sleep(0.01)
    print(f"{len(sessions)} sessions", flush=True)
    time.sleep(hold)


if __name__ == "__main__":
    main()
