"""Image verdicts at runtime (issue 16): is a new container's image blocked by a policy's
``spec.images.block``? Pure: the container, the policies in its scope and the image-verdict
list in; the slots that block it and why out. Called by agent/policy/hold.py when it
decides a container's held first exec.

The container's image is looked up by the digest its runtime gives (docker and podman:
the image ID, i.e. the config digest; containerd/CRI: the manifest digest) and by the
digest of an image reference pinned ``...@sha256:...``; the list holds both digests of
every scanned image (moray.api.imageverdicts). A tag is never looked up: a retagged image
is judged by what it is.

Fail-closed choices, for ``block: [unregistered]``:
- no list received yet (a new agent, or the control plane never reached) -> every image
  is unregistered: blocked, the reason says no list was received. An agent restart keeps
  the last list (it is cached on disk with the policies).
- the runtime gave no digest -> unregistered: blocked.
With only ``block: [non-compliant]``, those cases run (nothing says the image fails).
"""

from __future__ import annotations

from collections.abc import Iterable

from moray.agent.events.types import ImageHit
from moray.agent.policy.scope import ContainerLike
from moray.api.imageverdicts import ImageVerdictList, Verdict, judge
from moray.api.policy.model import Policy


def digests_of(c: ContainerLike) -> tuple[str, ...]:
    """The digests the container's image may be listed under (best first)."""
    out = []
    if c.image_digest:
        d = c.image_digest
        out.append(d if ":" in d else f"sha256:{d}")
    if c.image and "@sha256:" in c.image:
        out.append("sha256:" + c.image.rsplit("@sha256:", 1)[1])
    return tuple(dict.fromkeys(out))


def verdict_of(c: ContainerLike, vlist: ImageVerdictList | None, policies: tuple[str, ...]
               ) -> tuple[Verdict, str, tuple[str, ...]]:
    """(verdict, digest looked up, reasons) of the container's image."""
    digests = digests_of(c)
    if vlist is None:
        return (Verdict.UNREGISTERED, digests[0] if digests else "",
                ("no image-verdict list received from the control plane yet",))
    if not digests:
        return Verdict.UNREGISTERED, "", ("the runtime gave no image digest",)
    for d in digests:
        found = vlist.lookup(d)
        if found is not None:
            verdict, reasons = judge(found.verdicts, policies)
            if verdict is Verdict.UNREGISTERED and not reasons:
                reasons = ("no assurance verdict stored for this image",)
            return verdict, d, reasons
    return (Verdict.UNREGISTERED, digests[0],
            (f"not in the image-verdict list (version {vlist.version}): not scanned",))


def image_block(c: ContainerLike | None, slotted: Iterable[tuple[int, Policy]], mask: int,
                vlist: ImageVerdictList | None) -> tuple[int, ImageHit | None]:
    """The slots (within ``mask``) whose ``spec.images.block`` blocks the container's
    image, and the first such verdict (for the event)."""
    if c is None:
        return 0, None
    hit, first = 0, None
    judged: dict[tuple[str, ...], tuple[Verdict, str, tuple[str, ...]]] = {}
    for slot, p in slotted:
        if not (mask >> slot) & 1 or not p.images.used:
            continue
        if p.images.policies not in judged:
            judged[p.images.policies] = verdict_of(c, vlist, p.images.policies)
        verdict, digest, reasons = judged[p.images.policies]
        if str(verdict) in p.images.block:
            hit |= 1 << slot
            if first is None:
                first = ImageHit(c.image or "", digest, str(verdict), reasons)
    return hit, first
