"""The image-verdict list (controlplane/server/imagelist.py, moray.api.imageverdicts) on a
real SQLite store: built from the stored verdicts (manifest and config digests), signed
with the policy key so the agent's verifier accepts it and refuses a tampered copy, given
only to tenants with a policy that uses ``spec.images``, versioned by verdict writes (one
content per version), and the change watcher re-reads it when a verdict is stored."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Engine

from moray.agent.controlplane.policies import PolicyCache, PolicyRejected, PolicyVerifier
from moray.api.imageverdicts import (
    MAX_REASONS,
    VERDICTS_KIND,
    VERDICTS_NAME,
    ImageVerdictList,
    ListError,
    Verdict,
    judge,
)
from moray.api.proto import moray_pb2
from moray.controlplane.server.imagelist import ImageListSource
from moray.controlplane.server.pki import PolicyKey
from moray.controlplane.server.watch import PolicyWatcher
from moray.controlplane.store.cpstore import ControlPlaneStore
from moray.controlplane.store.scanstore import ScanStore
from tests.unit.controlplane.conftest import FakeSigner

M1, C1 = "sha256:" + "1" * 64, "sha256:" + "a" * 64
M2 = "sha256:" + "2" * 64
IMAGES = {"apiVersion": "moray/v1", "kind": "RuntimePolicy", "metadata": {"name": "gate"},
          "spec": {"scope": {"containers": {}}, "images": {"block": ["non-compliant"]}}}
PLAIN = {"apiVersion": "moray/v1", "kind": "RuntimePolicy", "metadata": {"name": "p"},
         "spec": {"scope": {"host": True}, "exec": {"deny": ["/bin/sh"]}}}


@pytest.fixture
def key() -> PolicyKey:
    return PolicyKey(ed25519.Ed25519PrivateKey.generate())


def _verifier(key: PolicyKey) -> PolicyVerifier:
    return PolicyVerifier(key.public_raw, "agent-1")


def test_each_tenant_lists_its_own_images(engine: Engine, key: PolicyKey) -> None:
    """Verdicts are shared by digest, lists are not: a tenant's agents get the images its
    scans and admission reviews brought in; images nobody brought in (verdicts recorded
    by hand) are the default tenant's."""
    store, scans = ControlPlaneStore(engine), ScanStore(engine)
    m3 = "sha256:" + "3" * 64
    for digest in (M1, M2, m3):
        scans.record_verdict(digest, f"r/{digest[7]}:1", "strict", True, [])
    scans.link_images("t1", [M1, M2])
    scans.link_images("t3", [M2])
    for tenant in ("t1", "t3", "t4", "default"):
        store.apply_policy(tenant, "gate", IMAGES, author="a", signer=FakeSigner())
    policies: dict[str, dict[str, Any]] = {}
    for r in store.current_policies():
        policies.setdefault(r.tenant, {})[r.name] = r
    ImageListSource(scans, key).add(policies)

    def images_of(tenant: str) -> set[str]:
        doc = _verifier(key).verify(policies[tenant][VERDICTS_NAME].signed()
                                    .SerializeToString()).document
        return {i.digest for i in ImageVerdictList.from_document(doc).images}

    assert images_of("t1") == {M1, M2} and images_of("t3") == {M2}
    assert images_of("t4") == set() and images_of("default") == {m3}
    assert scans.has_image("t3", M2) and not scans.has_image("t3", M1)
    assert scans.has_image("default", m3) and not scans.has_image("default", M1)
    assert not scans.has_image("t4", m3) and scans.has_image(None, M1)


def test_list_per_tenant_signed_and_verified_by_the_agent(engine: Engine, key: PolicyKey,
                                                          tmp_path: Path) -> None:
    store, scans = ControlPlaneStore(engine), ScanStore(engine)
    scans.record_verdict(M1, "r/app:1", "strict", False, [f"CVE-{i}" for i in range(20)],
                         config_digest=C1)
    scans.record_verdict(M1, "r/app:1", "base", True, [])    # the config digest is kept
    scans.record_verdict(M2, "r/other:1", "strict", True, [])
    scans.link_images("t1", [M1, M2])       # t1's scans and reviews brought both in
    store.apply_policy("t1", "gate", IMAGES, author="a", signer=FakeSigner())
    store.apply_policy("t2", "p", PLAIN, author="a", signer=FakeSigner())
    source = ImageListSource(scans, key)
    policies = {r.tenant: {} for r in store.current_policies(include_removed=True)}
    for r in store.current_policies(include_removed=True):
        policies[r.tenant][r.name] = r
    source.add(policies)
    assert VERDICTS_NAME not in policies["t2"]          # no policy of t2 uses images
    record = policies["t1"][VERDICTS_NAME]
    assert list(policies["t1"]) == [VERDICTS_NAME, "gate"]   # sent before its users
    assert record.version == 4 == scans.verdicts_version()[0] + 1
    got = _verifier(key).verify(record.signed().SerializeToString())
    assert (got.name, got.kind, got.tenant, got.version) == (VERDICTS_NAME, VERDICTS_KIND,
                                                             "t1", 4)
    listed = ImageVerdictList.from_document(got.document)
    assert len(listed) == 2 and listed.lookup(C1) is listed.lookup(M1) is not None
    assert listed.lookup("a" * 64) is listed.lookup(C1)   # a bare hex image ID
    app = listed.lookup(C1)
    assert app is not None and app.image == "r/app:1"
    verdicts = {v.policy: v for v in app.verdicts}
    assert verdicts["base"].passed and not verdicts["strict"].passed
    assert len(verdicts["strict"].reasons) == MAX_REASONS + 1
    assert verdicts["strict"].reasons[-1] == f"... and {20 - MAX_REASONS} more"
    assert judge(app.verdicts, ("base",)) == (Verdict.COMPLIANT, ())
    assert judge(app.verdicts, ())[0] is Verdict.NON_COMPLIANT
    assert judge(app.verdicts, ("prod",)) == (Verdict.UNREGISTERED,
                                              ("no verdict for policy prod",))

    # a tampered copy fails verification; nothing re-signed while nothing changed
    payload = moray_pb2.PolicyPayload.FromString(record.payload)
    payload.document_json = payload.document_json.replace("false", "true")
    forged = moray_pb2.SignedPolicy(payload=payload.SerializeToString(),
                                    signature=record.signature, key_id=record.key_id)
    with pytest.raises(PolicyRejected):
        _verifier(key).verify(forged.SerializeToString())
    again = {t: dict(ps) for t, ps in policies.items()}
    again["t1"].pop(VERDICTS_NAME)
    source.add(again)
    assert again["t1"][VERDICTS_NAME] is record

    # the agent keeps it, takes a removal, and takes the same version again afterwards
    cache = PolicyCache(tmp_path / "cache")
    assert cache.check(got)
    cache.accept(got)
    removal = moray_pb2.PolicyPayload(name=VERDICTS_NAME, version=4, removed=True,
                                      agent_id="agent-1", kind=VERDICTS_KIND)
    raw = payload_signed(key, removal)
    gone = _verifier(key).verify(raw)
    assert cache.check(gone)
    cache.accept(gone)
    assert cache.check(got)


def payload_signed(key: PolicyKey, payload: moray_pb2.PolicyPayload) -> bytes:
    data = payload.SerializeToString()
    return moray_pb2.SignedPolicy(payload=data, signature=key.sign(data),
                                  key_id=key.key_id).SerializeToString()


def test_kind_and_name_must_agree(key: PolicyKey) -> None:
    for name, kind in ((VERDICTS_NAME, ""), ("gate", VERDICTS_KIND), ("gate", "other")):
        raw = payload_signed(key, moray_pb2.PolicyPayload(name=name, version=1, kind=kind,
                                                          document_json="{}"))
        with pytest.raises(PolicyRejected, match="kind"):
            _verifier(key).verify(raw)


def test_bad_documents_are_refused() -> None:
    for doc in ({}, {"kind": "ImageVerdictList", "images": [{"verdicts": []}]},
                {"kind": "ImageVerdictList", "images": 3}):
        with pytest.raises(ListError):
            ImageVerdictList.from_document(doc)


def test_a_stored_verdict_wakes_the_watcher(engine: Engine, key: PolicyKey) -> None:
    store, scans = ControlPlaneStore(engine), ScanStore(engine)
    store.apply_policy("default", "gate", IMAGES, author="a", signer=FakeSigner())

    async def main() -> None:
        watcher = PolicyWatcher(store, poll_seconds=3600, extra=ImageListSource(scans, key))
        scans.on_verdict = watcher.poke
        await watcher.start()
        assert watcher.snapshot.tenant("default")[VERDICTS_NAME].version == 1   # empty list
        await asyncio.to_thread(scans.record_verdict, M1, "r/app:1", "strict", True, [])
        deadline = asyncio.get_running_loop().time() + 10   # within min_interval (2 s)
        while watcher.snapshot.tenant("default")[VERDICTS_NAME].version != 2:
            assert asyncio.get_running_loop().time() < deadline, "not re-read"
            await asyncio.sleep(0.01)
        await watcher.stop()

    asyncio.run(main())


def test_lists_rebuilt_at_most_once_per_interval(engine: Engine, key: PolicyKey) -> None:
    """A burst of verdicts: the list in place stays until min_interval has passed since
    it was built (retry_in says when to read again), then the newest is built."""
    store, scans = ControlPlaneStore(engine), ScanStore(engine)
    store.apply_policy("default", "gate", IMAGES, author="a", signer=FakeSigner())
    now = [100.0]
    source = ImageListSource(scans, key, min_interval=10, clock=lambda: now[0])

    def version() -> int:
        policies = {"default": {r.name: r for r in store.current_policies()}}
        source.add(policies)
        return policies["default"][VERDICTS_NAME].version

    assert version() == 1 and source.retry_in == 0
    scans.record_verdict(M1, "r/app:1", "strict", True, [])
    scans.record_verdict(M2, "r/b:1", "strict", True, [])
    now[0] += 4
    assert version() == 1 and source.retry_in == pytest.approx(6)
    now[0] += 6
    assert version() == 3 and source.retry_in == 0


def test_safety_net_poll_finds_a_verdict_written_elsewhere(engine: Engine,
                                                          key: PolicyKey) -> None:
    """A verdict written by another process (no poke): the poll compares the verdicts'
    version too."""
    store = ControlPlaneStore(engine)
    store.apply_policy("default", "gate", IMAGES, author="a", signer=FakeSigner())

    async def main() -> None:
        watcher = PolicyWatcher(store, poll_seconds=0.05,
                                extra=ImageListSource(ScanStore(engine), key))
        await watcher.start()
        ScanStore(engine).record_verdict(M1, "r/app:1", "strict", True, [])
        deadline = asyncio.get_running_loop().time() + 5
        while watcher.snapshot.tenant("default")[VERDICTS_NAME].version != 2:
            assert asyncio.get_running_loop().time() < deadline, "not found by the poll"
            await asyncio.sleep(0.01)
        listed = ImageVerdictList.from_document(
            json.loads(moray_pb2.PolicyPayload.FromString(
                watcher.snapshot.tenant("default")[VERDICTS_NAME].payload).document_json))
        assert listed.lookup(M1) is not None
        await watcher.stop()

    asyncio.run(main())



def test_a_scans_verdict_links_the_image_to_its_jobs_tenant(engine: Engine) -> None:
    """The verdict a worker reports for a job makes the image that job's tenant's, in the
    verdict's own transaction (never nobody's, the default tenant's, in between); another
    tenant's job of the same reference does not get it (it may lack the credentials)."""
    scans = ScanStore(engine)
    job_a = scans.enqueue_scan("reg/private:1", tenant="a")
    scans.enqueue_scan("reg/private:1", tenant="b")
    scans.record_verdict(M1, "reg/private:1", "p", True, [], job_id=job_a)
    assert scans.has_image("a", M1) and not scans.has_image("b", M1)
    assert not scans.has_image("default", M1)
    # a verdict without its job (an older worker): every tenant with a job of the image
    scans.record_verdict(M2, "reg/private:1", "p", True, [])
    assert scans.has_image("a", M2) and scans.has_image("b", M2)
