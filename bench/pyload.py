"""Python stand-ins for the C workloads in bench/c/, used only when gcc is missing.

Same command lines and the same one output line ("<operations> <elapsed seconds>") as
the C programs, so bench/run.py treats both alike. Python's own per-iteration cost (a few
microseconds) is far larger than the C loops', so overhead ratios measured with these
are diluted: bench/run.py says so when it falls back.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time


def spawn(n: int, path: str) -> int:
    t0 = time.monotonic()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                os.execve(path, [path], {})
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            print(f"spawn: child exited with status {status}", file=sys.stderr)
            return 1
    print(n, f"{time.monotonic() - t0:.9f}")
    return 0


def opens(path: str, n: int, rate: float = 0.0, limit: float = 0.0, files: int = 0) -> int:
    paths = [f"{path}/f{i}" for i in range(files)] if files > 0 else [path]
    t0 = time.monotonic()
    done = 0
    for i in range(n):
        os.close(os.open(paths[i % len(paths)], os.O_RDONLY))
        done = i + 1
        if (rate > 0 or limit > 0) and i & 63 == 63:
            el = time.monotonic() - t0
            if limit > 0 and el >= limit:
                break
            if rate > 0 and (ahead := done / rate - el) > 0:
                time.sleep(ahead)
    print(done, f"{time.monotonic() - t0:.9f}")
    return 0


def changes(path: str, n: int) -> int:
    t0 = time.monotonic()
    for i in range(n):
        os.chmod(path, 0o744 if i & 1 else 0o644)
    print(n, f"{time.monotonic() - t0:.9f}")
    return 0


def connstorm(n: int) -> int:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    addr = ls.getsockname()
    linger = struct.pack("ii", 1, 0)
    t0 = time.monotonic()
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.connect(addr)
        a, _ = ls.accept()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        c.close()
        a.close()
    print(n, f"{time.monotonic() - t0:.9f}")
    ls.close()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "spawn":
        return spawn(int(argv[1]), argv[2])
    if len(argv) >= 3 and argv[0] == "opens":
        rate = float(argv[3]) if len(argv) > 3 else 0.0
        limit = float(argv[4]) if len(argv) > 4 else 0.0
        files = int(argv[5]) if len(argv) > 5 else 0
        return opens(argv[1], int(argv[2]), rate, limit, files)
    if len(argv) == 3 and argv[0] == "changes":
        return changes(argv[1], int(argv[2]))
    if len(argv) == 2 and argv[0] == "connstorm":
        return connstorm(int(argv[1]))
    print("usage: pyload.py spawn N PATH | opens PATH N [RATE [SECONDS [FILES]]] | "
          "changes PATH N | "
          "connstorm N",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
