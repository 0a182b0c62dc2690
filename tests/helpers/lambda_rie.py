"""The AWS Lambda runtime interface emulator (``aws-lambda-rie``) running a Python
function through the real runtime interface client (``awslambdaric``), for the
NanoEnforcer's tests and benchmark.

The emulator binary ships in a PyPI wheel (aws-sam-cli's ``samcli/local/rapid/``);
``make install`` extracts it into ``.venv/bin/aws-lambda-rie`` (Makefile, target
``.stamps/rie``). ``find_rie`` also takes ``$MORAY_LAMBDA_RIE`` or one on ``PATH``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

INVOKE = "/2015-03-31/functions/function/invocations"


def find_rie() -> str | None:
    for cand in (os.environ.get("MORAY_LAMBDA_RIE"),
                 str(Path(sys.executable).parent / "aws-lambda-rie"),
                 shutil.which("aws-lambda-rie")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def ric_path() -> str | None:
    """The directory holding ``awslambdaric`` (for the function's PYTHONPATH)."""
    spec = importlib.util.find_spec("awslambdaric")
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent.parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """One emulator + function runtime; ``invoke`` posts an event and returns the
    function's answer (its result, or the runtime's error object)."""

    def __init__(self, task: Path, handler: str, log: Path,
                 wrapper: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        rie, ric = find_rie(), ric_path()
        if rie is None or ric is None:
            raise FileNotFoundError("aws-lambda-rie or awslambdaric missing (make install)")
        self.port = free_port()
        self.api_port = free_port()
        self.log = log
        self.wrapper = list(wrapper)
        full_env = {"PATH": os.environ.get("PATH", os.defpath),
                    "PYTHONPATH": f"{ric}:{task}", "AWS_LAMBDA_FUNCTION_NAME": "nano-test",
                    "AWS_LAMBDA_FUNCTION_TIMEOUT": "60", "AWS_REGION": "local-1",
                    "LOG_LEVEL": "warn", **(env or {})}
        self._out = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [rie, "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
             "--runtime-api-address", f"127.0.0.1:{self.api_port}",
             *wrapper, sys.executable, "-m", "awslambdaric", handler],
            cwd=task, env=full_env, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"aws-lambda-rie did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def invoke(self, event: Any, timeout: float = 60) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{INVOKE}",
                                     data=json.dumps(event).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def lines(self) -> list[dict[str, Any]]:
        """The JSON objects the function wrote to its log stream so far."""
        out = []
        for line in self.log.read_bytes().splitlines():
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_events(self, request_id: str, count: int = 1,
                    timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            got = [e for e in self.lines() if e.get("enforcer") == "nano"
                   and (e.get("function") or {}).get("request_id") == request_id]
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@contextlib.contextmanager
def emulator(task: Path, handler: str, log: Path, wrapper: Sequence[str] = (),
             env: dict[str, str] | None = None) -> Iterator[Emulator]:
    e = Emulator(task, handler, log, wrapper, env)
    try:
        yield e
    finally:
        e.stop()
