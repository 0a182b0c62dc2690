"""The default runtime policy `make run` applies (packaging/run-local) is one the server and
the agent accept, and it blocks nothing (monitor mode)."""

from __future__ import annotations

from pathlib import Path

from moray.api.policy.load import load_text
from moray.controlplane.server.policydoc import parse_policies

POLICY = Path(__file__).resolve().parents[3] / "packaging" / "etc" / "policies" / "default.yaml"


def test_default_policy_is_valid_and_monitor_only() -> None:
    text = POLICY.read_text()
    load_text(text, str(POLICY))              # the agent's loader: raises if invalid
    (parsed,) = parse_policies(text, str(POLICY))
    assert parsed.name == "default-baseline" and parsed.tenant == "default"
    assert parsed.document["spec"]["mode"] == "monitor"


def test_run_local_applies_it() -> None:
    script = (POLICY.parents[2] / "run-local").read_text()
    assert "packaging/etc/policies/default.yaml" in script
