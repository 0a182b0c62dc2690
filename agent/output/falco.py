"""Falco-format alerts (`--alert-format falco`): moray's alert object -> the JSON Falco
writes for a rule match, so falcosidekick, its UI and Falco's other consumers take moray's
alerts unchanged. The mapping is documented in docs/falco.md (keep the two in step):

    {"time": RFC 3339 UTC with ns, "rule", "priority": "Warning", "output": "<text>",
     "output_fields": {"proc.name": ..., "container.id": ..., ...},
     "hostname", "source": "syscall", "tags": [...]}

`output_fields` holds Falco's own field names (validated in tests against Falco's field
list, tests/fixtures/falco/fields.txt) for every moray field that has an equivalent; a
field of the triggering event's kind that moray does not know is null, as Falco writes
it, and fields of other kinds are left out (an exec alert has no `fd.*`). Three moray
fields without a Falco equivalent travel under the `moray.` prefix (a Falco plugin's
field names look the same): `moray.exec_id`, `moray.rule_source`, `moray.response`.

Built on the pipeline thread for each alert (alerts are rare): ~8 us an alert, encoded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# moray's priorities are RFC 5424 severities (agent/detect/model.py Priority): Falco's
# eight priorities are the same scale under other spellings, one to one
PRIORITIES = {"EMERGENCY": "Emergency", "ALERT": "Alert", "CRITICAL": "Critical",
              "ERROR": "Error", "WARNING": "Warning", "NOTICE": "Notice",
              "INFORMATIONAL": "Informational", "DEBUG": "Debug"}

# moray event type -> Falco's evt.type (the syscall or event name Falco would show)
EVT_TYPES = {"exec": "execve", "fork": "clone", "exit": "procexit", "open": "openat",
             "connect": "connect", "accept": "accept", "listen": "listen", "send": "sendto",
             "enforce": "enforce"}

FORMATS = ("moray", "falco")

class UserNames:
    """uid -> name from the host's /etc/passwd (`host_root`/etc/passwd: the host's file in
    a DaemonSet too), re-read when its mtime changes (checked at most every `recheck`
    seconds). The file, not NSS: a lookup must never block the pipeline thread on a
    directory service. uid 0 is root everywhere; other uids are named for host processes
    only (a container's /etc/passwd is not read): else None."""

    def __init__(self, host_root: str = "/", recheck: float = 10.0) -> None:
        self.path = os.path.join(host_root, "etc/passwd")
        self.recheck = recheck
        self._names: dict[int, str] = {}
        self._mtime = -1.0
        self._next = 0.0

    def _load(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.recheck
        try:
            st = os.stat(self.path)
            if st.st_mtime == self._mtime:
                return
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 22)
        except OSError:
            self._names, self._mtime = {}, -1.0
            return
        names: dict[int, str] = {}
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                names.setdefault(int(parts[2]), parts[0])
        self._names, self._mtime = names, st.st_mtime

    def __call__(self, uid: int | None, in_container: bool) -> str | None:
        if uid is None:
            return None
        if uid == 0:
            return "root"
        if in_container:
            return None
        self._load()
        return self._names.get(uid)


_HOST_USERS = UserNames()


def epoch_ns(t: str | None) -> int | None:
    """RFC 3339 UTC with up to 9 fractional digits -> ns since the epoch."""
    if not t:
        return None
    try:
        head, _, frac = t.rstrip("Z").partition(".")
        s = int(datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None
    digits = "".join(ch for ch in frac if ch.isdigit())[:9]
    return s * 1_000_000_000 + int(digits.ljust(9, "0") or 0)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def split_image(ref: str | None) -> tuple[str | None, str | None]:
    """`registry:5000/org/app:1.2@sha256:..` -> ("registry:5000/org/app", "1.2"); no tag:
    (repository, None); a digest-only reference has no tag either."""
    if not ref:
        return None, None
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, None


def _cmdline(name: str | None, args: list[str] | tuple[str, ...] | None) -> str | None:
    """Falco's proc.cmdline: the process name, then argv[1:]."""
    if name is None and not args:
        return None
    return " ".join([name or (args[0] if args else ""), *(args or ())[1:]])


def _endpoints(t: str, n: dict[str, Any]) -> dict[str, Any]:
    """fd.* of a moray `network` object. Falco names the two ends client and server and
    local and remote: connect/send are the client (saddr is local), accept and listen the
    server (saddr is the local, listening end; daddr the accepted peer)."""
    laddr, lport, raddr, rport = n.get("saddr"), n.get("sport"), n.get("daddr"), n.get("dport")
    server = t in ("accept", "listen")
    cip, cport, sip, sport = (raddr, rport, laddr, lport) if server else (laddr, lport, raddr,
                                                                          rport)
    six = n.get("family") == "ipv6"

    def hp(a: Any, p: Any) -> str:
        return f"{a}:{p}" if not six else f"[{a}]:{p}"
    # "client->server" as Falco writes it; an end moray does not know (a connect's
    # local end before the kernel picked one, a listen's peer) is left out
    ends = [hp(a, p) for a, p in ((cip, cport), (sip, sport)) if a is not None]
    name = "->".join(ends) if ends else None
    return {"fd.name": name, "fd.type": n.get("family"), "fd.l4proto": n.get("protocol"),
            "fd.cip": cip, "fd.cport": cport, "fd.sip": sip, "fd.sport": sport,
            "fd.lip": laddr, "fd.lport": lport, "fd.rip": raddr, "fd.rport": rport,
            "fd.is_server": server}


Users = Callable[[int | None, bool], str | None]


def output_fields(alert: dict[str, Any], users: Users = _HOST_USERS) -> dict[str, Any]:
    """Falco's `output_fields` of a moray alert (module docstring); `users`: uid -> name
    (UserNames of the agent's --host-root)."""
    e = alert.get("event") or {}
    t = str(e.get("type") or "")
    p = e.get("process") or {}
    par = e.get("parent") or {}
    anc = alert.get("ancestry") or []
    a0 = anc[0] if anc else {}
    c = e.get("container")
    args = p.get("args") or []
    of: dict[str, Any] = {
        "evt.time": epoch_ns(e.get("time") or alert.get("time")),
        "evt.type": (e.get("syscall") or {}).get("name") if t == "syscall" else
        EVT_TYPES.get(t, t or None),
        "evt.hostname": alert.get("node") or e.get("node"),
        "proc.name": p.get("comm"),
        "proc.exe": args[0] if args else None,
        "proc.exepath": p.get("binary"),
        "proc.args": " ".join(args[1:]) if args else None,
        "proc.cmdline": _cmdline(p.get("comm"), args),
        "proc.cwd": p.get("cwd"),
        "proc.pid": p.get("pid"),
        "thread.tid": p.get("tid"),
        "proc.ppid": par.get("pid"),
        "proc.pname": a0.get("name"),
        "proc.pexepath": par.get("binary") or a0.get("binary"),
        "proc.pcmdline": _cmdline(a0.get("name"), a0.get("args")) if a0 else None,
        "user.uid": p.get("uid"),
        "user.name": users(p.get("uid"), bool(c)),
        "group.gid": p.get("gid"),
        "moray.exec_id": p.get("exec_id"),
        "moray.rule_source": alert.get("source"),
    }
    if c:
        repo, tag = split_image(c.get("image"))
        pod = c.get("pod") or {}
        cid = str(c.get("id") or "")
        of.update({
            "container.id": cid[:12] or None, "container.full_id": cid or None,
            "container.name": c.get("name"), "container.image": c.get("image"),
            "container.image.repository": repo, "container.image.tag": tag,
            "container.image.digest": c.get("image_digest"),
            "container.type": c.get("runtime"),
            "k8s.ns.name": pod.get("namespace"), "k8s.pod.name": pod.get("name"),
            "k8s.pod.uid": pod.get("uid"),
            "k8s.pod.labels": ",".join(f"{k}:{v}" for k, v in (pod.get("labels") or {}).items())
            or None,
        })
    else:  # Falco's values for a host process
        of.update({"container.id": "host", "container.name": "host",
                   "container.image.repository": None, "container.image.tag": None,
                   "k8s.ns.name": None, "k8s.pod.name": None})
    f = e.get("file")
    if f:
        path = f.get("path")
        of.update({
            "fd.name": path, "fd.type": "file",
            "fd.directory": os.path.dirname(path) if path else None,
            "fd.filename": os.path.basename(path) if path else None,
            "fd.num": f.get("fd"),
            "evt.res": f.get("error") or "SUCCESS",
            "evt.rawres": f.get("result") if f.get("error") else f.get("fd"),
            "evt.failed": bool(f.get("error")),
            "evt.is_open_read": f.get("access") in ("read", "read-write"),
            "evt.is_open_write": f.get("access") in ("write", "read-write"),
            "evt.is_open_create": "O_CREAT" in (f.get("flags") or ()),
        })
    n = e.get("network")
    if n:
        of.update(_endpoints(t, n))
    s = e.get("syscall")
    if s:
        res = s.get("result")
        of.update({"syscall.type": s.get("name"), "fs.path.name": s.get("path"),
                   "evt.res": s.get("error") or ("SUCCESS" if isinstance(res, int) and res >= 0
                                                 else None),
                   "evt.rawres": res, "evt.failed": bool(s.get("error"))})
        if s.get("newpath") is not None:
            of.update({"fs.path.source": s.get("target") or s.get("path"),
                       "fs.path.target": s.get("newpath")})
    r = alert.get("response")
    if r:
        of["moray.response"] = r.get("action") if r.get("ok") else (
            f"{r.get('action')} failed: {r.get('error')}")
    return of


def to_falco(alert: dict[str, Any], users: Users = _HOST_USERS) -> dict[str, Any]:
    """The Falco JSON of one moray alert (engine.Detector.alert's object)."""
    t = alert.get("time") or _now()
    prio = PRIORITIES.get(str(alert.get("priority")), "Warning")
    clock = t[11:] if len(t) > 11 else t
    clock = clock.rstrip("Z")
    text = str(alert.get("output") or alert.get("rule") or "")
    return {
        "time": t,
        "rule": alert.get("rule"),
        "priority": prio,
        # as Falco renders it: "<evt.time>: <Priority> <the rule's output>"
        "output": f"{clock}: {prio} {text}",
        "output_fields": output_fields(alert, users),
        "hostname": alert.get("node") or (alert.get("event") or {}).get("node"),
        "source": "syscall",
        "tags": list(alert.get("tags") or ()),
    }
