"""A process a test started (agent, server, gateway): stopped or killed the same way."""

from __future__ import annotations

import signal
import subprocess


class Child:
    """``stop()``: SIGTERM, then SIGKILL after ``stop_timeout`` seconds; ``kill()``: SIGKILL
    (no clean shutdown, like a crash or an OOM kill)."""

    proc: subprocess.Popen[bytes] | None
    stop_timeout: float = 15

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
