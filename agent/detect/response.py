"""Responses to an alert: kill the process, or stop the container (every process in its
cgroup). These run in user space after the event was reported, so they are *detect, then
respond*: the action the rule caught has already happened; what follows it is stopped.
Prevention is the policy engine's job (agent/policy, decided in the kernel).

A pid is only signalled if it still runs the process the event was about (its start time
in /proc/<pid>/stat matches the exec id), so a reused pid is never hit.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

log = logging.getLogger(__name__)


def _start_ticks(proc: str, pid: int) -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class Responder:
    def __init__(self, proc: str = "/proc", cgroup2: str | None = "/sys/fs/cgroup/unified"
                 ) -> None:
        self.proc = proc
        self.cgroup2 = cgroup2

    def act(self, action: str, e: dict[str, Any]) -> dict[str, Any]:
        p = e["process"]
        pid = int(p["pid"])
        start = int(str(p["exec_id"]).split(":")[1])
        out: dict[str, Any] = {"action": action, "detect_then_respond": True, "ok": False,
                               "error": None}
        if action == "kill":
            if _start_ticks(self.proc, pid) != start:
                out["error"] = "process already gone"
                return out
            try:
                os.kill(pid, signal.SIGKILL)
                out["ok"] = True
            except OSError as err:
                out["error"] = err.strerror
        elif action == "stop_container":
            out.update(self._stop_container(e, pid))
        return out

    def _stop_container(self, e: dict[str, Any], pid: int) -> dict[str, Any]:
        c = e.get("container")
        if not c:
            return {"error": "not in a container"}
        path = c.get("cgroup_path")
        if not path:
            try:
                with open(f"{self.proc}/{pid}/cgroup") as f:
                    path = next((ln[3:].strip() for ln in f if ln.startswith("0::")), None)
            except OSError as err:
                return {"error": f"cannot find the container's cgroup: {err.strerror}"}
        if not path or self.cgroup2 is None or path == "/":
            return {"error": "cannot find the container's cgroup"}
        kill = os.path.join(self.cgroup2, path.lstrip("/"), "cgroup.kill")
        try:
            with open(kill, "w") as f:
                f.write("1")
        except OSError as err:
            return {"error": f"{kill}: {err.strerror}"}
        log.warning("stopped container %s (cgroup.kill)", c.get("id"))
        return {"ok": True, "error": None}
