"""Agent-side verification: forged and tampered policies, replays of older versions,
removals addressed to another agent, and the on-disk cache — no server needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from moray.agent.controlplane.policies import PolicyCache, PolicyRejected, PolicyVerifier
from moray.api.proto import moray_pb2

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signed(name: str, version: int, *, removed: bool = False, agent_id: str = "",
           key: Ed25519PrivateKey = KEY, doc: dict[str, object] | None = None) -> bytes:
    payload = moray_pb2.PolicyPayload(name=name, tenant="default", version=version,
                                      removed=removed, agent_id=agent_id,
                                      document_json=json.dumps(doc or {"v": version}),
                                      sha256=f"sha-{version}").SerializeToString()
    return moray_pb2.SignedPolicy(payload=payload, signature=key.sign(payload)
                                  ).SerializeToString()


def test_forged_and_tampered_are_rejected() -> None:
    verifier = PolicyVerifier(PUB, "me")
    assert verifier.verify(signed("p", 1)).document == {"v": 1}
    with pytest.raises(PolicyRejected) as err:
        verifier.verify(signed("p", 2, key=Ed25519PrivateKey.generate()))
    assert err.value.status == moray_pb2.REJECTED_SIGNATURE and err.value.version == 2
    msg = moray_pb2.SignedPolicy.FromString(signed("p", 3))
    msg.payload = msg.payload.replace(b'"v": 3', b'"v": 4')
    with pytest.raises(PolicyRejected):
        verifier.verify(msg.SerializeToString())
    with pytest.raises(PolicyRejected):
        verifier.verify(b"\xff\xff not a protobuf")


def test_removal_for_another_agent_is_refused() -> None:
    verifier = PolicyVerifier(PUB, "me")
    assert verifier.verify(signed("p", 2, removed=True, agent_id="me")).removed
    with pytest.raises(PolicyRejected) as err:
        verifier.verify(signed("p", 2, removed=True, agent_id="someone-else"))
    assert err.value.status == moray_pb2.REJECTED_REPLAY


def test_replay_of_older_versions_rejected_across_restarts(tmp_path: Path) -> None:
    verifier = PolicyVerifier(PUB, "me")
    cache = PolicyCache(tmp_path)
    v1, v2 = verifier.verify(signed("p", 1)), verifier.verify(signed("p", 2))
    assert cache.check(v1)
    cache.accept(v1)
    assert cache.check(v2)
    cache.accept(v2)
    assert not cache.check(v2)                 # the same version again: a harmless resend
    reopened = PolicyCache(tmp_path)
    with pytest.raises(PolicyRejected) as err:
        reopened.check(v1)
    assert err.value.status == moray_pb2.REJECTED_REPLAY
    other_doc = verifier.verify(signed("p", 2, doc={"evil": True}))
    other_doc = type(other_doc)(**{**{f: getattr(other_doc, f) for f in other_doc.__slots__},
                                  "sha256": "different"})
    with pytest.raises(PolicyRejected):        # same version number, other content
        reopened.check(other_doc)
    removal = verifier.verify(signed("p", 2, removed=True, agent_id="me"))
    assert reopened.check(removal)
    reopened.accept(removal)
    assert reopened.versions() == {}
    with pytest.raises(PolicyRejected):
        reopened.check(v2)                     # removed at 2: v2 cannot come back by replay


def test_cache_reverifies_on_load(tmp_path: Path) -> None:
    verifier = PolicyVerifier(PUB, "me")
    cache = PolicyCache(tmp_path)
    for name in ("a", "b"):
        cache.accept(verifier.verify(signed(name, 1)))
    data = (tmp_path / "b.signed").read_bytes()
    (tmp_path / "b.signed").write_bytes(data.replace(b'"v": 1', b'"v": 9'))
    assert [p.name for p in cache.load(verifier)] == ["a"]
    assert cache.versions() == {"a": 1}       # set aside, so the server sends it again
    assert (tmp_path / "b.signed.rejected").exists()
    assert cache.check(verifier.verify(signed("b", 1)))   # the genuine copy is taken again
