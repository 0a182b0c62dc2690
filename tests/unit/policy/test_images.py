"""Image verdicts at runtime on the agent (issue 16): ``spec.images`` in the policy model
(errors naming file, line and field), the judgement of a container's image against the
image-verdict list (agent/policy/images.py: config or manifest digest, a pinned
reference, no list, no digest, not listed), a held exec killed for its image
(agent/policy/hold.py) and its explanation (the image, digest and reasons)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from moray.agent.bpf import abi
from moray.agent.events.types import Decision, EnforceEvent, ImageHit, Proc
from moray.agent.policy.engine import IMAGE_LIST_FILE
from moray.agent.policy.explain import explain
from moray.agent.policy.hold import Holds
from moray.agent.policy.images import digests_of, image_block, verdict_of
from moray.api.imageverdicts import ImageVerdictList, ListedImage, StoredVerdict, Verdict
from moray.api.policy.load import PolicyError, load_text
from tests.unit.policy.test_hold import _Map

M, C = "sha256:" + "1" * 64, "sha256:" + "c" * 64
GATE = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {{name: {name}}}
spec:
  scope: {{containers: {{}}}}
  images: {images}
"""


def _policy(images: str, name: str = "gate"):  # type: ignore[no-untyped-def]
    return load_text(GATE.format(name=name, images=images), f"{name}.yaml")[0]


@dataclass(frozen=True)
class Ctr:
    id: str = "c1"
    name: str | None = "web"
    runtime: str = "docker"
    image: str | None = "r.test/app:1"
    image_digest: str | None = C
    pod_namespace: str | None = None
    pod_name: str | None = None
    pod_labels: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    cgroup_path: str = ""


LIST = ImageVerdictList(7, [
    ListedImage(M, C, "r.test/app:1", (StoredVerdict("strict", False, ("CVE-1 (high)",),
                                                     False),
                                       StoredVerdict("base", True, (), False)))])


@pytest.mark.parametrize(("images", "where", "message"), [
    ("{block: [nope]}", "gate.yaml:6: spec.images.block[0]", "expected one of"),
    ("{policies: [x]}", "gate.yaml:6: spec.images.block", "is required"),
    ("{block: [unregistered], extra: 1}", "gate.yaml:6: spec.images.extra", "unknown"),
    ("[non-compliant]", "gate.yaml:6: spec.images", "mapping"),
])
def test_spec_images_errors_name_file_line_field(images: str, where: str,
                                                 message: str) -> None:
    with pytest.raises(PolicyError) as err:
        _policy(images)
    assert where in str(err.value) and message in str(err.value), str(err.value)


def test_spec_images_only_for_containers() -> None:
    text = GATE.format(name="g", images="{block: [unregistered]}").replace(
        "containers: {}", "host: true")
    with pytest.raises(PolicyError, match=r"spec\.images: applies to containers"):
        load_text(text, "g.yaml")


def test_spec_images_model() -> None:
    p = _policy("{block: [unregistered, non-compliant, unregistered], policies: [strict]}")
    assert p.images.block == ("non-compliant", "unregistered")   # canonical order, once
    assert p.images.policies == ("strict",) and p.images.used and p.rule_count() == 2


def test_digests_and_verdicts() -> None:
    assert digests_of(Ctr(image_digest="c" * 64)) == (C,)          # bare image ID
    assert digests_of(Ctr(image=f"r.test/app@{M}", image_digest=None)) == (M,)
    assert verdict_of(Ctr(), LIST, ()) == (Verdict.NON_COMPLIANT, C,
                                            ("strict: CVE-1 (high)",))
    assert verdict_of(Ctr(image_digest=M), LIST, ("base",)) == (Verdict.COMPLIANT, M, ())
    assert verdict_of(Ctr(), LIST, ("prod",))[0] is Verdict.UNREGISTERED
    v, d, why = verdict_of(Ctr(image_digest="sha256:" + "9" * 64), LIST, ())
    assert v is Verdict.UNREGISTERED and "not in the image-verdict list (version 7)" in why[0]
    v, d, why = verdict_of(Ctr(image_digest=None), LIST, ())
    assert (v, d) == (Verdict.UNREGISTERED, "") and "no image digest" in why[0]
    v, d, why = verdict_of(Ctr(), None, ())    # no list yet: unregistered (fail closed)
    assert (v, d) == (Verdict.UNREGISTERED, C) and "no image-verdict list" in why[0]


def test_image_block_per_slot() -> None:
    strict = _policy("{block: [non-compliant]}", "strict")
    lax = _policy("{block: [non-compliant], policies: [base]}", "lax")
    unreg = _policy("{block: [unregistered]}", "unreg")
    slotted = [(0, strict), (1, lax), (2, unreg)]
    hit, why = image_block(Ctr(), slotted, 0b111, LIST)
    assert hit == 0b001 and why == ImageHit("r.test/app:1", C, "non-compliant",
                                            ("strict: CVE-1 (high)",))
    assert image_block(Ctr(), slotted, 0b110, LIST) == (0, None)   # not in scope: slot 0
    hit, why = image_block(Ctr(), slotted, 0b111, None)            # no list
    assert hit == 0b100 and why is not None and why.verdict == "unregistered"
    assert image_block(None, slotted, 0b111, LIST) == (0, None)    # not a container


@dataclass
class _Conf:
    host: int = 0
    active: int = 0b1
    enforce: int = 0b1


class _Applier:
    def __init__(self) -> None:
        self.maps = {"mr_ppend": _Map(), "mr_phold": _Map(), "mr_pscope": _Map()}

    def live(self) -> tuple[_Conf, int, int]:
        return _Conf(), 0, 0


def test_held_exec_in_a_blocked_image_is_killed_with_the_image_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task held at its first exec (no exec rule hit) in a classified container whose
    image is blocked: SIGKILL, and the Decision carries the image."""
    from moray.agent.policy import hold

    pid = os.getpid()       # our own process stands in for the held task; kill is caught
    (tmp_path / str(pid)).symlink_to(f"/proc/{pid}")
    ap = _Applier()
    ap.maps["mr_pscope"].rows[struct.pack("<Q", 9)] = struct.pack("<Q", 0b1)
    ap.maps["mr_phold"].rows[struct.pack("<I", pid)] = hold._PHOLD.pack(9, 0, 0, 0, 1)
    got: list[Decision] = []
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(hold.os, "kill", lambda p, s: killed.append((p, s)))
    why = ImageHit("r.test/app:1", C, "non-compliant", ("strict: CVE-1 (high)",))
    h = Holds(ap, resolver=None, proc=str(tmp_path), emit=got.append,  # type: ignore[arg-type]
              image_check=lambda cg, mask: (mask, why) if cg == 9 else (0, None))
    monkeypatch.setattr(h, "_same_process", lambda _h: True)
    assert h.decide() == 1
    assert killed == [(pid, hold.signal.SIGKILL)] and h.decisions["killed"] == 1
    (dec,) = got
    assert (dec.event.action, dec.event.kind, dec.event.image) == (
        abi.EAction.KILLED, abi.EKind.EXEC, why)


def test_explained_with_image_and_rule() -> None:
    p = _policy("{block: [non-compliant, unregistered]}")
    proc = Proc(pid=4, tid=4, ppid=1, uid=0, euid=0, gid=0, mntns=1, cgroup_id=9,
                start_ns=5, pstart_ns=1, comm="sh")
    why = ImageHit("r.test/app:1", C, "non-compliant", ("strict: CVE-1 (high)",))
    ev = EnforceEvent(ts=1, proc=proc, kind=abi.EKind.EXEC, action=abi.EAction.KILLED,
                      policies=1, enforced=1, arg=0, family=0, daddr=None, dport=0,
                      path="/bin/sh", path2="/bin/sh", image=why)
    out = explain(ev, {0: p}, {"exec": "lsm"})
    assert (out["policy"], out["rule"], out["action"]) == ("gate", "images.block: "
                                                          "non-compliant", "killed")
    assert out["image"] == {"image": "r.test/app:1", "digest": C, "verdict": "non-compliant",
                            "reasons": ["strict: CVE-1 (high)"]}
    assert "image is blocked" in out["note"]


def test_list_file_is_a_dot_file() -> None:
    assert IMAGE_LIST_FILE.startswith(".")    # never read as a policy by load_dir
