"""The NanoEnforcer's events: the agent's JSON event schema (docs/events.md, type
``enforce``) with ``"enforcer": "nano"``, the function and the invocation's request id.

The data: one :class:`Reporter` per function process, made at start (the process and
function fields are read once then: they do not change within an execution environment);
per event, the request id is read from the runtime at that moment. Lines go to file
descriptor 1 with one ``write`` each: that is the function's log stream on Lambda, and it
bypasses ``sys.stdout`` (which the runtime replaces, and a handler may too).

Duplicates are folded: an operation refused again and again (a loop) is reported once per
invocation, kind, rule and target, and at most ``MAX_PER_INVOCATION`` distinct
events per invocation are written; the next event after the cap says how many were
suppressed.

Standard library only (runs inside the function).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

TYPE_CHECKING = False  # typing is not imported at run time (cold start: rules.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

ENFORCER = "nano"
TIER = "audit-hook"
MAX_PER_INVOCATION = 256
# the runtimes that keep the current request id in a module global: the Python runtime
# interface client (awslambdaric, also inside AWS's managed Python images) and the older
# managed runtime's own bootstrap module (imported as ``bootstrap``, or run as __main__)
_RUNTIME_MODULES = ("awslambdaric.bootstrap", "bootstrap", "__main__")


def request_id() -> str | None:
    """The current invocation's request id (``context.aws_request_id``), None during
    the init phase or outside a Lambda runtime."""
    for name in _RUNTIME_MODULES:
        mod = sys.modules.get(name)
        rid = getattr(mod, "_GLOBAL_AWS_REQUEST_ID", None) if mod is not None else None
        if rid:
            return str(rid)
    return os.environ.get("_X_AMZN_REQUEST_ID") or None


def rfc3339(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def _exec_id(pid: int, proc: str = "/proc") -> str | None:
    """``<pid>:<start ticks>`` as the agent writes it (docs/events.md)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read().decode()
        return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return None


class Reporter:
    """Builds and writes the events of one function process."""

    def __init__(self, policy: str, sink: Callable[[bytes], None] | None = None,
                 environ: dict[str, str] | None = None,
                 rid: Callable[[], str | None] = request_id,
                 clock: Callable[[], int] = time.time_ns) -> None:
        env = dict(os.environ if environ is None else environ)
        self.policy = policy
        self.sink = sink or self._stdout
        self.rid = rid
        self.clock = clock
        pid = os.getpid()
        self.node = os.uname().nodename
        self.process = {"pid": pid, "exec_id": _exec_id(pid), "binary": sys.executable,
                        "args": list(sys.orig_argv), "cwd": os.getcwd(),
                        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid()}
        self.function = {"name": env.get("AWS_LAMBDA_FUNCTION_NAME"),
                         "version": env.get("AWS_LAMBDA_FUNCTION_VERSION"),
                         "region": env.get("AWS_REGION"),
                         "log_stream": env.get("AWS_LAMBDA_LOG_STREAM_NAME")}
        self._lock = threading.Lock()
        self._seen_rid: str | None = None
        self._seen: set[tuple[str, str, str]] = set()
        self.suppressed = 0
        self.written = 0
        self.lost = 0  # lines the log stream did not take (fd 1 closed or full)

    def _stdout(self, line: bytes) -> None:
        try:
            os.write(1, line)
        except OSError:
            self.lost += 1  # nowhere else to say it: counted, the decision stands

    def report(self, action: str, kind: str, rule: str, target: str, reason: str,
               audit_event: str, extra: dict[str, Any]) -> bool:
        """Write one event unless it repeats one of this invocation (or the cap is
        reached); True if written."""
        rid = self.rid()
        key = (kind, rule, target)
        with self._lock:
            if rid != self._seen_rid:
                self._seen_rid, self._seen = rid, set()
            if key in self._seen:
                return False
            if len(self._seen) >= MAX_PER_INVOCATION:
                self.suppressed += 1
                return False
            self._seen.add(key)
            suppressed, self.suppressed = self.suppressed, 0
        enforcement: dict[str, Any] = {
            "action": action, "kind": kind, "tier": TIER, "policy": self.policy,
            "rule": rule, "note": reason, "audit_event": audit_event}
        if suppressed:
            enforcement["suppressed_before"] = suppressed
        out: dict[str, Any] = {
            "type": "enforce", "time": rfc3339(self.clock()), "node": self.node,
            "enforcer": ENFORCER,
            "process": {**self.process, "tid": threading.get_native_id()},
            "parent": None, "container": None,
            "function": {**self.function, "request_id": rid,
                         "phase": "invoke" if rid else "init"},
            "enforcement": enforcement, **extra}
        line = json.dumps(out, separators=(",", ":"), default=str) + "\n"
        self.sink(line.encode())
        self.written += 1
        return True


__all__ = ["ENFORCER", "MAX_PER_INVOCATION", "TIER", "Reporter", "request_id", "rfc3339"]
