"""Image assurance verdicts as both sides judge them: the admission webhook
(controlplane/kubeenforcer/) and the agent (agent/policy/images.py) apply the same
``judge`` to the same stored verdicts, so an image is compliant, non-compliant or
unregistered the same way in the cluster's admission and on every host.

The image-verdict list (``ImageVerdictList``) is what the server pushes to agents on the
policy stream (a ``PolicyPayload`` of kind ``image-verdicts``, named ``VERDICTS_NAME``,
signed with the policy key like policies): every stored verdict, per image, keyed by the
image's manifest digest *and* its config digest (docker and podman name a container's
image by its image ID, the config digest; containerd/CRI by the manifest digest). Its
document (``document_json``)::

    {"apiVersion": "moray/v1", "kind": "ImageVerdictList", "version": 1733590000123,
     "images": [{"digest": "sha256:<manifest>", "config": "sha256:<config>",
                 "image": "registry/repo:tag",
                 "verdicts": [{"policy": "baseline", "passed": false,
                               "reasons": ["..."]}]}]}

The list carries the stored verdicts, not a decision: which assurance policies must pass
is said by the runtime policy (``spec.images.policies``), and the agent judges with
``judge`` below, so a policy change takes effect as soon as the policy is pushed.
The document is a function of the stored verdict rows alone (no staleness, which moves
with vulnerability imports), so one version always means one content, whichever server
process built it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moray.errors import ControlPlaneError

VERDICTS_NAME = "_image-verdicts"   # never a policy name (those start with [a-z0-9])
VERDICTS_KIND = "image-verdicts"    # PolicyPayload.kind
LIST_KIND = "ImageVerdictList"
MAX_REASONS = 8                     # reasons kept per verdict in the pushed list
MAX_REASON = 300                    # characters per reason


class Verdict(enum.StrEnum):
    COMPLIANT = "compliant"
    NON_COMPLIANT = "non-compliant"
    UNREGISTERED = "unregistered"
    UNRESOLVED = "unresolved"
    UNKNOWN = "unknown"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    policy: str
    passed: bool
    reasons: tuple[str, ...]
    stale: bool          # made on older vulnerability data (a rescan is queued by the server)


def judge(verdicts: Iterable[StoredVerdict], policies: Iterable[str]
          ) -> tuple[Verdict, tuple[str, ...]]:
    """A digest's stored verdicts -> its verdict and reasons. ``policies``: the assurance
    policies that must pass (empty: every stored verdict counts, and at least one must
    exist)."""
    required = tuple(policies)
    relevant = [v for v in verdicts if not required or v.policy in required]
    failed = [v for v in relevant if not v.passed]
    if failed:
        return Verdict.NON_COMPLIANT, tuple(
            f"{v.policy}: {r}" for v in failed for r in (v.reasons or ("failed",)))
    missing = sorted(set(required) - {v.policy for v in relevant})
    if not relevant or missing:
        return Verdict.UNREGISTERED, tuple(f"no verdict for policy {p}" for p in missing)
    return Verdict.COMPLIANT, ()


@dataclass(frozen=True, slots=True)
class ListedImage:
    digest: str                 # manifest digest
    config: str                 # config digest ('' when not known)
    image: str                  # the reference it was scanned as
    verdicts: tuple[StoredVerdict, ...]


class ListError(ControlPlaneError, ValueError):
    """An image-verdict list document that cannot be read."""


def _short(reasons: Sequence[str]) -> list[str]:
    kept = [r if len(r) <= MAX_REASON else r[:MAX_REASON - 3] + "..."
            for r in reasons[:MAX_REASONS]]
    if len(reasons) > MAX_REASONS:
        kept.append(f"... and {len(reasons) - MAX_REASONS} more")
    return kept


def list_document(version: int, images: Iterable[ListedImage]) -> dict[str, Any]:
    """The list's document (reasons cut to MAX_REASONS of MAX_REASON characters)."""
    return {"apiVersion": "moray/v1", "kind": LIST_KIND, "version": version,
            "images": [{"digest": i.digest, "config": i.config, "image": i.image,
                        "verdicts": [{"policy": v.policy, "passed": v.passed,
                                      "reasons": _short(v.reasons)}
                                     for v in i.verdicts]}
                       for i in sorted(images, key=lambda i: i.digest)]}


def list_json(version: int, images: Iterable[ListedImage]) -> str:
    return json.dumps(list_document(version, images), sort_keys=True,
                      separators=(",", ":"))


class ImageVerdictList:
    """A received list, indexed by manifest and config digest."""

    def __init__(self, version: int, images: Iterable[ListedImage]) -> None:
        self.version = version
        self.images = tuple(images)
        self._by: dict[str, ListedImage] = {}
        for i in self.images:
            self._by[i.digest] = i
            if i.config:
                self._by.setdefault(i.config, i)

    def __len__(self) -> int:
        return len(self.images)

    def lookup(self, digest: str | None) -> ListedImage | None:
        """The image whose manifest or config digest is ``digest`` (sha256:...)."""
        if not digest:
            return None
        return self._by.get(digest if ":" in digest else f"sha256:{digest}")

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ImageVerdictList:
        if not isinstance(doc, Mapping) or doc.get("kind") != LIST_KIND:
            raise ListError(f"not an {LIST_KIND}")
        try:
            images = [ListedImage(
                str(i["digest"]), str(i.get("config") or ""), str(i.get("image") or ""),
                tuple(StoredVerdict(str(v["policy"]), bool(v["passed"]),
                                    tuple(str(r) for r in v.get("reasons") or ()),
                                    False)
                      for v in i.get("verdicts") or ()))
                for i in doc.get("images") or ()]
            return cls(int(doc.get("version", 0)), images)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ListError(f"bad {LIST_KIND}: {type(err).__name__}: {err}") from err
