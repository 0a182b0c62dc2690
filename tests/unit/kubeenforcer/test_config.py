"""config.load: defaults, every key, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from moray.controlplane.kubeenforcer.config import (
    Failure,
    Mode,
    RegistrySettings,
    Unregistered,
    load,
)
from moray.errors import ConfigError

FLAGS = {"server": "https://s", "token": "t"}
POLICY = "apiVersion: moray/v1\nkind: ImageAssurancePolicy\nmetadata: {name: p}\nspec: {}\n"


def test_defaults_are_the_safe_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    c = load(None, **FLAGS)
    assert (c.mode, c.unregistered, c.failure) == (Mode.ENFORCE, Unregistered.DENY,
                                                   Failure.CLOSED)
    assert c.excluded_namespaces == {"kube-system", "moray"}
    monkeypatch.setenv("POD_NAMESPACE", "security")
    assert load(None, **FLAGS).excluded_namespaces == {"kube-system", "security"}


def test_every_key(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    f = tmp_path / "c.yaml"
    f.write_text(f"""
cluster: eu-1
namespace: sec
mode: monitor
unregistered: scan
failurePolicy: open
policies: [p]
scan: {{policyFile: {tmp_path / 'p.yaml'}, budget: 4}}
excludeNamespaces: [kube-system, kube-public]
excludeLabels: {{moray.io/skip: "true"}}
registries: {{"127.0.0.1:5000": {{insecure: true, credentials: env:REG}}}}
platform: linux/arm64
verdictTTL: 5
unregisteredTTL: 1
tagTTL: 10
maxStale: 60
serverTimeout: 1.5
registryTimeout: 2
""")
    c = load(f, **FLAGS)
    assert (c.cluster, c.mode, c.unregistered, c.failure) == ("eu-1", Mode.MONITOR,
                                                              Unregistered.SCAN, Failure.OPEN)
    assert c.scan_policy == POLICY and c.scan_budget == 4 and c.policies == ("p",)
    assert c.excluded_namespaces == {"kube-system", "kube-public", "sec"}
    assert c.registry("127.0.0.1:5000") == RegistrySettings(True, "env:REG")
    assert c.registry("other") == RegistrySettings()
    assert c.platform == ("linux", "arm64") and c.verdict_ttl == 5 and c.max_stale == 60


@pytest.mark.parametrize(("text", "message"), [
    ("mode: block", "mode: 'block' is not one of enforce, monitor"),
    ("failurePolicy: Fail", "failurePolicy: 'Fail' is not one of closed, open"),
    ("unregistered: scan", "unregistered: scan needs scan.policy"),
    ("{unregistered: scan, scan: {budget: 9}}", "scan.budget (9) must be below requestTimeout"),
    ("scan: {policy: 'kind: X'}", "scan.policy: not an ImageAssurancePolicy"),
    ("verdictTTL: -1", "verdictTTL: a number of seconds >= 0"),
    ("excludeNamespaces: kube-system", "excludeNamespaces: a list of non-empty strings"),
    ("registries: {r: {tls: false}}", "registries.r: insecure and credentials only"),
    ("platform: amd64", "platform: OS/ARCH"),
    ("bogus: 1", "unknown keys: bogus"),
    ("- a", "must be a mapping"),
    ("a: [", "not YAML"),
])
def test_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(f, **FLAGS)
    assert message in str(err.value) and str(f) in str(err.value)
