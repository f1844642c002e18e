#!/usr/bin/env python3
"""The benchmark's service: run by Haven as a `process` resource.

    service.py PORT EVIDENCE_FILE BIND

BIND is an address, or `env` for $HAVEN_BENCH_ADDR (the node's address, set in the
agent's environment by the benchmark and inherited by its resources).

It appends "<run-dir> <pid> <time_ns>" to EVIDENCE_FILE (shared by all nodes) as soon as
it starts and then every ~10 ms, and answers every TCP connection on BIND:PORT with
"<node> <pid>\n". Self-fencing kills it with SIGKILL, so it never writes a last word: the
safety check compares the last line of the old copy with the first line of the new one.
"""

import os
import socket
import sys
import threading
import time


def main():
    port, evidence, bind = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if bind == "env":
        bind = os.environ["HAVEN_BENCH_ADDR"]
    node = os.environ.get("HAVEN_BENCH_NODE", "?")
    tag = f"{os.getcwd()} {os.getpid()}"
    fd = os.open(evidence, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def mark():
        # One write(2) per line on an O_APPEND file: lines of concurrent copies never mix.
        os.write(fd, f"{tag} {time.time_ns()}\n".encode())

    mark()

    def beat():
        while True:
            time.sleep(0.01)
            mark()

    threading.Thread(target=beat, daemon=True).start()

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + 30
    while True:
        try:
            s.bind((bind, port))
            break
        except OSError as e:
            if time.monotonic() > deadline:
                print(f"cannot bind {bind}:{port}: {e}", file=sys.stderr, flush=True)
                sys.exit(1)
            time.sleep(0.05)
    s.listen(64)
    print(f"{node}: serving on {bind}:{port}", flush=True)
    banner = f"{node} {os.getpid()}\n".encode()
    while True:
        c, _ = s.accept()
        try:
            c.sendall(banner)
        except OSError:
            pass
        finally:
            c.close()


if __name__ == "__main__":
    main()
