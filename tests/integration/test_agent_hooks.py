"""Nothing attached that no rule needs (issue 18, must-have 2), against the real kernel:
with no policy no enforcement program runs and the detection programs follow the loaded
rules; a policy attaches its hook kinds at apply time and enforces, removing it detaches
them; after a stop with nothing enforcing, nothing of the agent is on the syscall path,
and with an enforcing policy only its kinds stay (and enforce).
Links are read from the kernel (bpftool), as an operator would. Root only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from moray.agent.policy.programs import KINDS, SCOPE_PROGRAMS
from tests.helpers.agent_proc import AgentProc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("bpftool") is None, reason="needs bpftool"),
]

NAME = 15  # the kernel keeps the first 15 bytes of a program's name

RULES = """- rule: ptrace only
  desc: one syscall rule, no module rule
  condition: evt.type = syscall and syscall.name = ptrace
  output: "ptrace by %proc.cmdline"
  priority: WARNING
"""

ENFORCEMENT = {p[:NAME] for progs in KINDS.values() for p in progs}


def _bpftool(kind: str, *args: str) -> list[dict[str, object]]:
    r = subprocess.run(["bpftool", "-j", kind, "show", *args], capture_output=True,
                       text=True, check=True)
    out = json.loads(r.stdout or "[]")
    return out if isinstance(out, list) else [out]


def agent_links(pin_root: str) -> list[str]:
    """Names of the programs of every BPF link whose program uses a map this agent pinned
    (its maps outlive it: also after a stop)."""
    maps = {int(str(m["id"])) for f in Path(pin_root, "maps").iterdir()
            for m in _bpftool("map", "pinned", str(f))}
    progs = {p["id"]: str(p.get("name")) for p in _bpftool("prog")
             if maps & set(p.get("map_ids") or ())}  # type: ignore[call-overload]
    # bpftool names a program by its BTF function name where the kernel's is cut short
    return sorted(progs[ln["prog_id"]][:NAME] for ln in _bpftool("link")
                  if ln.get("prog_id") in progs)


def file_policy(secret: Path) -> str:
    return f"""apiVersion: moray/v1
kind: RuntimePolicy
metadata: {{name: hooks-file}}
spec:
  scope: {{host: true}}
  mode: enforce
  files:
    deny:
      - {{path: {secret}, access: read}}
"""


def test_hooks_follow_rules_and_policies(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    agent = AgentProc(tmp_path / "agent", ["--no-default-rules", "--rules", str(rules)])
    try:
        agent.start()
        links = agent_links(agent.pin_root)
        # no policy: no enforcement program; detection: only what the ptrace rule needs
        assert not ENFORCEMENT & set(links), links
        assert "mr_so_out_ptrac" in links and "mr_so_in_ptrace" in links, links
        assert not [n for n in links if n.startswith("mr_so_") and "ptrac" not in n], links
        assert "mr_exit_openat" in links  # file observation (shared by the 4 exits)
        assert agent.wait_status(lambda d: "hooks" in d)["hooks"] == {}

        agent.apply("hooks-file", file_policy(secret))
        doc = agent.wait_status(lambda d: bool(d.get("hooks")))
        assert set(doc["hooks"]) == {"exec", "file", "file-change"} & set(KINDS), doc
        links = agent_links(agent.pin_root)
        assert "mr_enf_openat" in links and "mr_enf_exec" in links, links
        assert "mr_enf_sys" not in links and "mr_enf_args" not in links, links
        res = subprocess.run(["cat", str(secret)], capture_output=True, check=False)
        assert res.returncode == -9 and not res.stdout, res  # killed before it read

        agent.delete("hooks-file")
        agent.wait_status(lambda d: d.get("hooks") == {})
        links = agent_links(agent.pin_root)
        assert not ENFORCEMENT & set(links), links
        assert subprocess.run(["cat", str(secret)], capture_output=True,
                              check=False).returncode == 0

        agent.stop()  # nothing enforces: only the cgroup bookkeeping stays pinned
        left = agent_links(agent.pin_root)
        assert set(left) <= {p[:NAME] for p in SCOPE_PROGRAMS}, left
        assert agent.log_text().count("enforcement left pinned: none") == 1

        agent.start()  # an enforcing policy: its kinds stay pinned and enforce after stop
        agent.apply("hooks-file", file_policy(secret))
        agent.stop()
        left = set(agent_links(agent.pin_root))
        assert {"mr_enf_openat", "mr_enf_exec"} <= left, left
        assert "mr_exit_openat" not in left and "mr_enf_sys" not in left, left
        assert "enforcement left pinned: exec, file, file-change" in agent.log_text()
        res = subprocess.run(["cat", str(secret)], capture_output=True, check=False)
        assert res.returncode == -9 and not res.stdout, res
    finally:
        agent.cleanup()
