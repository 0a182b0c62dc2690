"""Falco rules in, end to end (root: runs the real agent, under the BPF lock).

`moray agent rules import` translates Falco's public falco_rules.yaml
(tests/fixtures/falco/rules); an agent runs the translated file alone
(`--no-default-rules --rules OUT`), and two translated Falco rules fire on real events:
"Search Private Keys or Passwords" on a real `grep` exec (Falco's proc.args read as one
string) and "PTRACE anti-debug attempt" on a real ptrace(PTRACE_TRACEME) (a Falco event
type moray observes as a syscall event). A grep that searches for something else raises
nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import AgentProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

REPO = Path(__file__).resolve().parents[2]
FALCO = REPO / "tests" / "fixtures" / "falco" / "rules" / "falco_rules.yaml"
TRACEME = ("import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
           "libc.ptrace(0, 0, 0, 0); sys.exit(0)")


def test_translated_falco_rules_fire_on_real_events(tmp_path: Path) -> None:
    out = tmp_path / "falco.yaml"
    subprocess.run([sys.executable, "-m", "moray.cli", "agent", "rules", "import", str(FALCO),
                    "-o", str(out)], cwd=REPO, check=True, capture_output=True, timeout=120)
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("nothing here\n")
    # a loaded 2-core host can take more than the helper's default 30 s to start an agent
    agent = AgentProcess(["--no-default-rules", "--rules", str(out)], workdir=tmp_path)
    try:
        agent.start(timeout=120)
        quiet = subprocess.Popen(["grep", "-r", "just words", str(data)])
        quiet.wait(30)
        grep = subprocess.Popen(["grep", "-r", "BEGIN PRIVATE", str(data)])
        grep.wait(30)
        tracer = subprocess.Popen([sys.executable, "-c", TRACEME])
        tracer.wait(30)

        def alert(rule: str, pid: int) -> Any:
            return agent.events.wait_for(
                lambda e: e.get("type") == "alert" and e.get("rule") == rule
                and e["event"]["process"]["pid"] == pid, timeout=30, what=f"alert {rule!r}")

        a = alert("Search Private Keys or Passwords", grep.pid)
        t = alert("PTRACE anti-debug attempt", tracer.pid)
        # the event that ends the test came after the quiet grep's exec: it was seen
        assert agent.events.all(lambda e: e.get("type") == "exec"
                                and e["process"]["pid"] == quiet.pid)
        assert not agent.events.all(lambda e: e.get("type") == "alert"
                                    and e["event"]["process"]["pid"] == quiet.pid)
    finally:
        agent.stop()
    assert a["priority"] == "WARNING" and "T1552.001" in a["tags"]
    assert "command=grep -r BEGIN PRIVATE" in a["output"], a["output"]
    assert t["event"]["syscall"]["request"] == "PTRACE_TRACEME"
    assert t["priority"] == "NOTICE"
