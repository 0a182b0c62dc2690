"""Running a long-lived service (server, gateway, kube-enforcer) until it is told to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

C = TypeVar("C")


def run_until_stopped(serve: Callable[[C, asyncio.Event], Awaitable[None]], config: C) -> int:
    """``serve(config, stop)`` on a new event loop; SIGTERM and SIGINT set ``stop`` (the
    service then stops cleanly: ports closed, work flushed). Returns the exit code, 0."""
    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(run())
    return 0
