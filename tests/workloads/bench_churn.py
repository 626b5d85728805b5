# Overhead benchmark workload (cargo xtask bench) in Python: a request handler that builds each response in a
# scratch mapping of 64 pages, writes every page, and unmaps it, as fast as it can, so that page charges are
# kept with the interpreter's frames on the stack. bench_churn.py page <seconds>; op = one page.
# Output: "ops <n> seconds <s>" on stdout, as bench_churn.c prints it.
import mmap
import sys
import time

PAGE = 4096
PAGES = 64


def fill_buffer(buf):
    for offset in range(0, len(buf), PAGE):
        buf[offset] = 1
    return len(buf) // PAGE


def build_response():
    buf = mmap.mmap(-1, PAGES * PAGE)
    try:
        return fill_buffer(buf)
    finally:
        buf.close()


def handle_request():
    return build_response()


def serve(seconds):
    ops = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for _ in range(16):
            ops += handle_request()
    return ops, time.monotonic() - start


def main():
    mode, seconds = sys.argv[1], float(sys.argv[2])
    if mode != "page":
        sys.exit(f"bench_churn.py: unknown mode {mode}")
    ops, elapsed = serve(seconds)
    print(f"ops {ops} seconds {elapsed:.6f}", flush=True)


if __name__ == "__main__":
    main()
