"""Signed policies on the agent: verify what the server sent, refuse forgeries and
replays, and keep the last verified policies on disk so the agent enforces them after a
restart while the server is unreachable.

On disk (``<data dir>/policies``):
- ``<name>.signed``: the SignedPolicy bytes exactly as received, re-verified on load (a
  file edited on disk is refused like a forged message).
- ``<name>.signed.rejected``: a cached file that no longer verified at load, kept for
  inspection and never enforced.
- ``floors.json``: policy name -> the highest version accepted (also for removals), and
  which floors a removal set, so a replayed older version (or a replay of the version a
  removal superseded) is rejected across restarts.
Both are replaced atomically (write, fsync, rename). Changes: ``accept`` after the
pipeline applied a policy (or removal), never before.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from moray.api.imageverdicts import VERDICTS_KIND, VERDICTS_NAME
from moray.api.proto import moray_pb2
from moray.errors import ControlPlaneError

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,253}$")


@dataclass(frozen=True, slots=True)
class VerifiedPolicy:
    """A policy whose signature verified: what the agent's ``on_policy`` hook receives.
    ``removed`` means: stop enforcing ``name`` (``document`` is empty then)."""

    name: str
    tenant: str
    version: int
    document: dict[str, Any]
    removed: bool
    sha256: str
    signed: bytes = field(repr=False)   # serialized SignedPolicy, for the cache
    kind: str = ""                      # "" a policy; "image-verdicts" the verdict list


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``on_policy`` returns: ``ok`` False with ``error`` when the pipeline refused
    it; ``tiers`` maps each rule id to the enforcement tier picked for it."""

    ok: bool
    error: str = ""
    tiers: dict[str, str] = field(default_factory=dict)


class PolicyRejected(ControlPlaneError):
    def __init__(self, status: moray_pb2.ApplyStatus, name: str, version: int,
                 reason: str) -> None:
        """``status``: a moray_pb2.ApplyStatus value (REJECTED_SIGNATURE, REJECTED_REPLAY)."""
        super().__init__(reason)
        self.status, self.name, self.version, self.reason = status, name, version, reason


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PolicyVerifier:
    def __init__(self, public_key_raw: bytes, agent_id: str) -> None:
        self._key = Ed25519PublicKey.from_public_bytes(public_key_raw)
        self.agent_id = agent_id

    def verify(self, signed_bytes: bytes) -> VerifiedPolicy:
        """Check the signature and decode; raises PolicyRejected(REJECTED_SIGNATURE)."""
        try:
            signed = moray_pb2.SignedPolicy.FromString(signed_bytes)
            self._key.verify(signed.signature, signed.payload)
            payload = moray_pb2.PolicyPayload.FromString(signed.payload)
        except (InvalidSignature, DecodeError, ValueError) as err:
            name, version = "", 0
            try:
                peek = moray_pb2.PolicyPayload.FromString(
                    moray_pb2.SignedPolicy.FromString(signed_bytes).payload)
                name, version = peek.name, peek.version
            except DecodeError:
                pass
            raise PolicyRejected(moray_pb2.REJECTED_SIGNATURE, name, version,
                                 f"signature does not verify ({type(err).__name__})") from err
        if not _SAFE.match(payload.name):
            raise PolicyRejected(moray_pb2.REJECTED_SIGNATURE, payload.name, payload.version,
                                 "policy name not allowed")
        if payload.kind not in ("", VERDICTS_KIND) or (
                (payload.kind == VERDICTS_KIND) != (payload.name == VERDICTS_NAME)):
            raise PolicyRejected(moray_pb2.REJECTED_SIGNATURE, payload.name, payload.version,
                                 f"payload kind {payload.kind!r} not allowed for this name")
        if payload.removed and payload.agent_id != self.agent_id:
            raise PolicyRejected(moray_pb2.REJECTED_REPLAY, payload.name, payload.version,
                                 "removal addressed to another agent")
        document = {} if payload.removed else json.loads(payload.document_json or "{}")
        return VerifiedPolicy(name=payload.name, tenant=payload.tenant,
                              version=payload.version, document=document,
                              removed=payload.removed, sha256=payload.sha256,
                              signed=signed_bytes, kind=payload.kind)


class PolicyCache:
    """Last verified policies and per-name version floors (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            state = json.loads((self.dir / "floors.json").read_text())
        except FileNotFoundError:
            state = {}
        self.floors: dict[str, int] = dict(state.get("floors", {}))
        self.removed: set[str] = set(state.get("removed", []))   # floor set by a removal

    def check(self, policy: VerifiedPolicy) -> bool:
        """True when ``policy`` should be applied, False when it is the version already
        enforced (a harmless resend); raises PolicyRejected for an older version."""
        floor = self.floors.get(policy.name, 0)
        if policy.version < floor:
            raise PolicyRejected(moray_pb2.REJECTED_REPLAY, policy.name, policy.version,
                                 f"version {policy.version} is older than {floor}")
        if policy.version == floor:
            held = self.dir / f"{policy.name}.signed"
            if policy.removed:
                return held.exists()            # a removal of what we still hold: apply
            if held.exists():
                current = PolicyCache._payload(held.read_bytes())
                if current is not None and current.sha256 == policy.sha256:
                    return False                # same version, same document: resend
            elif policy.name not in self.removed or policy.kind == VERDICTS_KIND:
                # ours, lost or set aside locally: re-fetch; or the image-verdict list
                # again after a removal (its version moves only with the verdicts)
                return True
            raise PolicyRejected(moray_pb2.REJECTED_REPLAY, policy.name, policy.version,
                                 f"version {policy.version} was already superseded")
        return True

    @staticmethod
    def _payload(signed_bytes: bytes) -> moray_pb2.PolicyPayload | None:
        try:
            payload: moray_pb2.PolicyPayload = moray_pb2.PolicyPayload.FromString(
                moray_pb2.SignedPolicy.FromString(signed_bytes).payload)
            return payload
        except DecodeError:
            return None

    def accept(self, policy: VerifiedPolicy) -> None:
        """Record an applied policy (or removal): durable before the agent acknowledges."""
        path = self.dir / f"{policy.name}.signed"
        if policy.removed:
            path.unlink(missing_ok=True)
        else:
            _atomic_write(path, policy.signed)
        self.floors[policy.name] = max(policy.version, self.floors.get(policy.name, 0))
        if policy.removed:
            self.removed.add(policy.name)
        else:
            self.removed.discard(policy.name)
        _atomic_write(self.dir / "floors.json", json.dumps(
            {"floors": self.floors, "removed": sorted(self.removed)}, sort_keys=True).encode())

    def versions(self) -> dict[str, int]:
        """Policy name -> version held (what the agent enforces)."""
        out = {}
        for path in self.dir.glob("*.signed"):
            payload = self._payload(path.read_bytes())
            if payload is not None:
                out[payload.name] = payload.version
        return out

    def load(self, verifier: PolicyVerifier) -> list[VerifiedPolicy]:
        """The cached policies whose signatures still verify. Others are logged and set
        aside as ``<name>.signed.rejected`` so the hello no longer claims them and the
        server sends the current version again."""
        good = []
        for path in sorted(self.dir.glob("*.signed")):
            try:
                good.append(verifier.verify(path.read_bytes()))
            except PolicyRejected as err:
                log.error("cached policy failed verification; not enforcing it",
                          extra={"path": str(path), "reason": err.reason})
                path.replace(path.with_name(path.name + ".rejected"))
        return good
