"""The benign workload of test_detect_benign.py under every rule kind issue 13 added, in
enforce mode, in a REAL runc container (root): nothing is blocked.

The policy denies writes to /etc and reads of /etc/shadow (by path and by identity), a
binary the workload never runs, drift, namespace creation and setuid/setgid/capability
bits. The workload runs shell scripts, reads /etc/passwd, writes /tmp and its workdir,
maps the host's Python and its libraries (read-only /usr bind), serves HTTP on loopback
and fetches from it. Every exec, mapping, open and change it makes must go through: no
`enforce` event may name the container, and its marker command must run.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import run_runc
from tests.integration.test_detect_benign import prepare

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs /usr/bin/python3"),
]

POLICY = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: benign-all}
spec:
  scope: {containers: {names: ['mr-enf-benign-*']}}
  mode: enforce
  exec: {deny: [/bin/nc, /usr/bin/gdb], drift: block}
  files:
    deny:
      - {path: /etc/*, access: write}
      - {path: /etc/shadow, access: read}
  namespaces: {deny: [all]}
  setid: {deny: [all]}
"""


@pytest.fixture(scope="module")
def run() -> Iterator[tuple[AgentProc, str]]:
    work = Path(tempfile.mkdtemp(prefix="moray-enf-benign-"))
    netns = f"mrenb{os.getpid()}"
    try:
        rootfs, usr = prepare(work, netns)
        with AgentProc(work / "agent") as agent:
            agent.apply("benign-all", POLICY)
            cid = f"mr-enf-benign-{os.getpid()}"
            with run_runc(cid, ["/bin/sh", "/entry.sh"], rootfs=rootfs,
                          network=f"/run/netns/{netns}", mounts=[usr],
                          env=("PATH=/bin:/usr/bin", "HOME=/root"), start=True):
                agent.wait_event(lambda e: e.get("type") == "exec" and any(
                    "benign-done" in a for a in e["process"]["args"]), timeout=120)
                yield agent, cid
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def test_nothing_blocked(run: tuple[AgentProc, str]) -> None:
    agent, cid = run
    mine = [e for e in agent.events() if (e.get("container") or {}).get("id") == cid]
    blocks = [enforcement(e) for e in mine if e.get("type") == "enforce"
              and enforcement(e).get("action") != "held"]
    assert not blocks, blocks
    execs = [" ".join(e["process"]["args"]) for e in mine if e.get("type") == "exec"]
    assert any("http.server" in a for a in execs), execs
    assert any("wget" in a for a in execs), execs
