"""Paths from a root other than the host's are named so (root: runs the real agent, under
the BPF lock).

A host process that pivots into a private root (dockerd's layer extraction, an image
builder, an attacker) writes *that* root's /etc/passwd, not the host's. The kernel's path
walk says which root it ended on (bpf/lib/path.h), the event carries it as `file.root`, and
the rules use it: dockerd unpacking an image layer raises no "Write below etc" or "Write
below binary directory"; a shell that pivoted into a directory and writes its /etc still
alerts, saying "root private"; a host read of /etc/shadow says "host".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import AgentProcess
from tests.helpers.containers import Dockerd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

HOST_PATH_RULES = {"Write below etc", "Write below binary directory", "Schedule cron job"}


def _file(e: dict[str, Any]) -> dict[str, Any]:
    return (e.get("event") or e).get("file") or {}


def test_private_root_is_named_and_layer_extraction_is_quiet(tmp_path: Path) -> None:
    root = tmp_path / "newroot"
    (root / "etc").mkdir(parents=True)
    (root / "old").mkdir()
    (tmp_path / "agent").mkdir()
    with AgentProcess([], workdir=tmp_path / "agent") as agent:
        # a shell pivots into a private root and writes its /etc
        script = (f"mount --make-rprivate / && mount --bind {root} {root} && cd {root} && "
                  "pivot_root . old && echo x > /etc/moray-private-root")
        subprocess.run(["unshare", "-m", "/bin/sh", "-c", script], check=True, timeout=30)
        a = agent.events.wait_for(
            lambda e: e.get("rule") == "Write below etc"
            and _file(e).get("path") == "/etc/moray-private-root",
            timeout=20, what="the private-root write alert")
        assert _file(a)["root"] == "private" and "root private" in a["output"]
        assert (root / "etc" / "moray-private-root").read_text() == "x\n"

        # the host's own file: root "host"
        subprocess.run(["/bin/cat", "/etc/shadow"], check=True, timeout=10,
                       stdout=subprocess.DEVNULL)
        h = agent.events.wait_for(
            lambda e: e.get("rule") == "Read sensitive file" and _file(e).get("path") ==
            "/etc/shadow" and (e.get("event") or {}).get("container") is None,
            timeout=20, what="the host shadow read alert")
        assert _file(h)["root"] == "host"

        # dockerd loads an image: its layer extraction writes /etc/passwd and /bin/busybox
        # in the layer's root; no host-path alert
        with Dockerd():
            pass
        unpacked = agent.events.wait_for(
            lambda e: e.get("type") == "open" and _file(e).get("root") == "private"
            and e["process"]["binary"] in ("/usr/sbin/dockerd", "/usr/bin/dockerd")
            and _file(e).get("path") in ("/etc/passwd", "/bin/busybox"),
            timeout=30, what="dockerd's layer extraction writing the layer's files")
        assert e_container(unpacked) is None
        noisy = agent.events.all(
            lambda e: e.get("rule") in HOST_PATH_RULES
            and (e.get("event") or {}).get("process", {}).get("binary", "").endswith(
                "/dockerd"))
        assert noisy == [], noisy[:2]


def e_container(e: dict[str, Any]) -> Any:
    return e.get("container")
