from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from moray.agent.controlplane.policies import VerifiedPolicy
from moray.agent.controlplane.policydir import PolicyDirSink, digest, rule_tiers

DOC = {"apiVersion": "moray/v1", "kind": "RuntimePolicy", "metadata": {"name": "p"},
       "spec": {"scope": {"host": True}, "exec": {"deny": ["/bin/nc"], "drift": "block"},
                "files": {"deny": [{"path": "/etc/shadow", "access": "read"}],
                          "monitor": [{"prefix": "/etc/", "access": "write"}]},
                "network": {"egress": {"deny": ["10.0.0.0/8"]}},
                "syscalls": {"deny": ["ptrace"]}}}
TIERS = {"exec": "kill", "file": "kill-after", "network": "cgroup-deny", "syscall": "kill-after"}


def _policy(removed: bool = False) -> VerifiedPolicy:
    return VerifiedPolicy(name="p", tenant="default", version=1, document={} if removed
                          else DOC, removed=removed, sha256="", signed=b"")


def test_rule_tiers_match_the_agents_rule_names() -> None:
    assert rule_tiers(DOC, TIERS) == {
        "exec.deny: /bin/nc": "kill", "exec.drift: block": "kill",
        "files.deny: /etc/shadow (read)": "kill-after",
        "files.monitor: /etc/ (write)": "monitor",
        "network.egress.deny: 10.0.0.0/8": "cgroup-deny", "syscalls.deny: ptrace": "kill-after"}
    monitor = {**DOC, "spec": {**DOC["spec"], "mode": "monitor"}}
    assert set(rule_tiers(monitor, TIERS).values()) == {"monitor"}


def test_writes_waits_for_the_agent_and_removes(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    sink = PolicyDirSink(tmp_path / "policies", status, timeout=5)

    def agent_publishes() -> None:
        time.sleep(0.2)
        status.write_text(json.dumps({"policies": [{"name": "p", "digest": digest(DOC)[:12]}],
                                      "tiers": TIERS, "errors": []}))

    threading.Thread(target=agent_publishes).start()
    result = sink(_policy())
    assert result.ok and result.tiers["exec.deny: /bin/nc"] == "kill"
    assert json.loads((tmp_path / "policies" / "cp-p.json").read_text()) == DOC
    status.write_text(json.dumps({"policies": [], "tiers": TIERS, "errors": []}))
    assert sink(_policy(removed=True)).ok
    assert not (tmp_path / "policies" / "cp-p.json").exists()


def test_agent_error_or_silence_fails(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    target = tmp_path / "policies" / "cp-p.json"
    status.write_text(json.dumps({"policies": [], "errors": [f"{target}:3: spec: bad"]}))
    result = PolicyDirSink(tmp_path / "policies", status, timeout=2)(_policy())
    assert not result.ok and "spec: bad" in result.error
    status.write_text(json.dumps({"policies": [], "errors": []}))
    slow = PolicyDirSink(tmp_path / "policies", status, timeout=0.3)(_policy())
    assert not slow.ok and "did not publish" in slow.error


def test_image_verdict_list_written_beside_policies_and_waited_for(tmp_path: Path) -> None:
    """The list goes to DIR/.image-verdicts.json (never read as a policy); the hook returns
    once the agent's status shows that list (its SHA-256); a removal deletes it."""
    import hashlib

    from moray.api.imageverdicts import VERDICTS_KIND, VERDICTS_NAME

    doc = {"apiVersion": "moray/v1", "kind": "ImageVerdictList", "version": 3, "images": []}
    status = tmp_path / "status.json"
    sink = PolicyDirSink(tmp_path / "p", status, timeout=5)
    target = tmp_path / "p" / ".image-verdicts.json"

    def agent() -> None:       # the engine's side: read the file, say so in the status
        while not target.exists():
            time.sleep(0.01)
        sha = hashlib.sha256(target.read_bytes()).hexdigest()
        status.write_text(json.dumps({"image_verdicts": {"version": 3, "sha256": sha}}))

    t = threading.Thread(target=agent)
    t.start()
    got = sink(VerifiedPolicy(VERDICTS_NAME, "default", 4, doc, False, "x", b"",
                              kind=VERDICTS_KIND))
    t.join()
    assert got.ok, got.error
    assert json.loads(target.read_text()) == doc
    assert not (tmp_path / "p" / f"cp-{VERDICTS_NAME}.json").exists()
    status.write_text(json.dumps({"image_verdicts": None}))
    gone = sink(VerifiedPolicy(VERDICTS_NAME, "default", 4, {}, True, "", b"",
                               kind=VERDICTS_KIND))
    assert gone.ok and not target.exists()
