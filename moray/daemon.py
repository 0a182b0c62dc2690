"""Running a long-lived service (server, gateway, kube-enforcer) until it is told to stop,
with the garbage collector set for a process that holds thousands of streams.

Python's collector, with its defaults, runs a young collection every 700 allocations and
older ones in proportion; in a gateway pushing a policy to 2,500 agent streams, each push
allocates some 50,000 short-lived objects (coroutine frames, futures, gRPC operations)
while the long-lived ones (every stream's task, call and context) are traversed again and
again: a fifth of the gateway's CPU per push went to the collector (5,000 simulated agents
through 2 gateways, docs/controlplane.md "Benchmark"). So: everything alive once the
modules are imported is moved out of the collector's sight (``gc.freeze``), and a young
collection runs every ``GC_THRESHOLD`` allocations. Reference counting still frees what is
not in a cycle at once; cycles wait a little longer (memory: a few MB at most).
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

C = TypeVar("C")

GC_THRESHOLD = 50_000   # allocations between two young collections (Python's default: 700)


def tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)


def run_until_stopped(serve: Callable[[C, asyncio.Event], Awaitable[None]], config: C) -> int:
    """``serve(config, stop)`` on a new event loop; SIGTERM and SIGINT set ``stop`` (the
    service then stops cleanly: ports closed, work flushed). Returns the exit code, 0."""
    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    tune_gc()
    asyncio.run(run())
    return 0
