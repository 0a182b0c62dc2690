"""decide: verdicts, settings and modes -> allowed, message, warnings (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from moray.controlplane.kubeenforcer.config import (
    EnforcerConfig,
    Failure,
    Mode,
    Unregistered,
)
from moray.controlplane.kubeenforcer.decide import (
    MAX_WARNING,
    Outcome,
    Verdict,
    decide,
    exclusion,
    judge,
)
from moray.controlplane.kubeenforcer.review import Container, parse
from moray.controlplane.kubeenforcer.verdicts import ImageVerdicts, StoredVerdict
from tests.helpers.kube import review, workload

CONFIG = EnforcerConfig(server="http://s", token="t")
C = Container("container", "app", "r.example/app:1")
D = "sha256:" + "1" * 64
REVIEW = parse(review(workload("Pod", "p", "shop", [C.image])))


def _verdicts(*items: tuple[str, bool, tuple[str, ...]]) -> ImageVerdicts:
    return ImageVerdicts(D, tuple(StoredVerdict(p, ok, r, False) for p, ok, r in items), 0.0)


def test_judge() -> None:
    assert judge(_verdicts(), ()) == (Verdict.UNREGISTERED, ())
    assert judge(_verdicts(("a", True, ())), ()) == (Verdict.COMPLIANT, ())
    assert judge(_verdicts(("a", True, ()), ("b", False, ("root",))), ()) == (
        Verdict.NON_COMPLIANT, ("b: root",))
    assert judge(_verdicts(("a", True, ()), ("b", False, ())), ("a",)) == (
        Verdict.COMPLIANT, ())   # only the required policies count
    assert judge(_verdicts(("a", True, ())), ("a", "prod")) == (
        Verdict.UNREGISTERED, ("no verdict for policy prod",))


def test_enforce_denies_non_compliant_naming_image_digest_controls() -> None:
    d = decide(REVIEW, [Outcome(C, Verdict.NON_COMPLIANT, D, ("strict: image runs as root",))],
               CONFIG)
    assert (d.allowed, d.decision) == (False, "deny")
    assert d.message == (f"image {C.image} ({D}) of container 'app' fails image assurance: "
                         "strict: image runs as root")


@pytest.mark.parametrize(("setting", "allowed"), [(Unregistered.DENY, False),
                                                  (Unregistered.ALLOW, True),
                                                  (Unregistered.SCAN, False)])
def test_unregistered(setting: Unregistered, allowed: bool) -> None:
    outcome = Outcome(C, Verdict.UNREGISTERED, D, scan_queued=setting is Unregistered.SCAN,
                      pinned=f"r.example/app@{D}")
    d = decide(REVIEW, [outcome], replace(CONFIG, unregistered=setting))
    assert d.allowed is allowed
    if setting is Unregistered.DENY:
        assert f"moray scan image add r.example/app@{D} --policy FILE" in d.message
    if setting is Unregistered.SCAN:
        assert "a scan was queued and did not finish within 7s" in d.message
    if setting is Unregistered.ALLOW:
        assert d.warnings[0].startswith("allowed (unregistered: allow): image")


@pytest.mark.parametrize("verdict", [Verdict.UNKNOWN, Verdict.UNRESOLVED])
def test_failure_policy(verdict: Verdict) -> None:
    o = Outcome(C, verdict, detail="x" * 1000)
    closed = decide(REVIEW, [o], CONFIG)
    assert not closed.allowed and "(failurePolicy: closed)" in closed.message
    opened = decide(REVIEW, [o], replace(CONFIG, failure=Failure.OPEN))
    assert opened.allowed and len(opened.warnings[0]) == MAX_WARNING
    assert opened.warnings[0].startswith("allowed (failurePolicy: open): image")


def test_monitor_allows_with_warnings() -> None:
    d = decide(REVIEW, [Outcome(C, Verdict.NON_COMPLIANT, D, ("p: bad",)),
                        Outcome(replace(C, name="b"), Verdict.COMPLIANT, D)],
               replace(CONFIG, mode=Mode.MONITOR))
    assert (d.allowed, d.decision) == (True, "warn")
    assert d.warnings == (f"would be denied: image {C.image} ({D}) of container 'app' fails "
                          "image assurance: p: bad",)


def test_unchanged_and_compliant_allowed_silently() -> None:
    d = decide(REVIEW, [Outcome(C, Verdict.UNCHANGED), Outcome(C, Verdict.COMPLIANT, D)],
               CONFIG)
    assert (d.allowed, d.decision, d.warnings, d.message) == (True, "allow", (), "")


def test_exclusions() -> None:
    assert exclusion(parse(review(workload("Pod", "p", "kube-system", ["a"]))), CONFIG) == \
        "namespace kube-system is excluded"
    assert exclusion(parse(review(workload("Pod", "p", "moray", ["a"]))), CONFIG) == \
        "namespace moray is excluded"
    labelled = replace(CONFIG, exclude_labels={"moray.io/skip": "true"})
    dep = workload("Deployment", "d", "shop", ["a"], template_labels={"moray.io/skip": "true"})
    assert exclusion(parse(review(dep)), labelled) == "labels moray.io/skip=true"
    # its pods carry the template's labels: excluded alike
    pod = workload("Pod", "d-x", "shop", ["a"], labels={"moray.io/skip": "true", "app": "d"})
    assert exclusion(parse(review(pod)), labelled) == "labels moray.io/skip=true"
    assert exclusion(parse(review(workload("Pod", "p", "shop", ["a"]))), labelled) == ""


def test_lookups_not_done_by_the_request_timeout_are_unknown() -> None:
    import asyncio
    import time

    from moray.controlplane.kubeenforcer.app import Enforcer

    async def run() -> None:
        async def slow() -> Outcome:
            await asyncio.sleep(5)
            raise AssertionError("not waited for")

        async def quick() -> Outcome:
            return Outcome(C, Verdict.COMPLIANT, D)

        checks = {"slow:1": asyncio.create_task(slow()), C.image: asyncio.create_task(quick())}
        out = await Enforcer._collect(checks, time.monotonic() + 0.1)
        assert out[C.image].verdict is Verdict.COMPLIANT
        assert out["slow:1"].verdict is Verdict.UNKNOWN
        assert out["slow:1"].detail == "no answer within requestTimeout"
        checks["slow:1"].cancel()

    asyncio.run(run())
