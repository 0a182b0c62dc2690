"""systemd's readiness protocol (sd_notify(3)) for the agent, the server and the gateway.

A unit with ``Type=notify`` sets ``NOTIFY_SOCKET`` to an AF_UNIX datagram socket (a path,
or ``@name`` in the abstract namespace); the service sends newline-separated ``KEY=value``
assignments to it, one datagram per call: ``READY=1`` when start-up is done, ``STATUS=...``
for ``systemctl status``, ``STOPPING=1`` when it begins to stop, ``WATCHDOG=1`` while it is
healthy when the unit has ``WatchdogSec=`` (the agent, from its main loop). Without
``NOTIFY_SOCKET`` (a shell, a container, a test) every call does nothing.

A dozen lines of protocol, so no library: systemd-python (or sdnotify) would be one more
dependency, a C extension for the former, for one ``sendto``. A failure to notify is logged
and never stops the service (systemd then times the start out, which says enough).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(*assignments: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (``"READY=1"``, ``"STATUS=loading BPF"``) in one datagram.
    Returns whether a datagram was sent."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    elif addr[0] != "/":  # vsock:... (a VM's manager) is not supported
        log.warning("NOTIFY_SOCKET %r is not a unix socket: not notifying systemd", addr)
        return False
    text = "\n".join(a.replace("\n", " ") for a in assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(text)
    except OSError as err:
        log.warning("cannot notify systemd at %s: %s", addr.lstrip("\0"), err)
        return False
    return True


def watchdog_enabled(env: Mapping[str, str] | None = None) -> bool:
    """``WatchdogSec=`` is set for this process: it should send ``WATCHDOG=1`` more often
    than ``$WATCHDOG_USEC`` (systemd arms the watchdog once READY=1 is sent)."""
    e = os.environ if env is None else env
    pid = e.get("WATCHDOG_PID")
    return bool(e.get("WATCHDOG_USEC")) and (not pid or pid == str(os.getpid()))


def ready(status: str = "") -> bool:
    return notify("READY=1", *((f"STATUS={status}",) if status else ()))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def stopping(status: str = "") -> bool:
    return notify("STOPPING=1", *((f"STATUS={status}",) if status else ()))
