"""The agent's own memory: resident size now and at its peak, and giving freed heap back.

`memory_mb()` reads VmRSS and VmHWM from /proc/self/status (logged after each start-up
step, agent/app.py). `trim()` asks glibc to return the free memory at the top of its
heaps and in its arenas to the kernel (`malloc_trim(0)`): start-up parses kernel BTF and
BPF objects, tens of MB that are freed but stay resident in glibc's arenas otherwise.
Without glibc (musl) `trim()` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def memory_mb(status: str = "/proc/self/status") -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB; (0, 0) where /proc is not readable."""
    rss = hwm = 0
    try:
        with open(status, "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss / 1024, hwm / 1024


def trim() -> bool:
    """malloc_trim(0): True if glibc released memory to the kernel."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        log.debug("no malloc_trim in %s", name)
        return False
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(fn(0))
