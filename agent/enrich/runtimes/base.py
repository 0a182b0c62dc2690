"""What every container runtime reader shares: the records, the reader Protocol, and the
helpers for state files and OCI annotations.

* :class:`CgroupMatch` -- what a cgroup path says (built by ``parse.py``);
  :class:`ContainerInfo` -- what a runtime's state files say about one container.
* :class:`ContainerRuntime` -- the Protocol each reader implements (``docker.py``,
  ``podman.py``, ``runc.py``, ``bundle.py``), so tests swap in fakes.
* :class:`StateFiles` -- JSON reads below an injectable host root; a missing or
  unreadable file reads as None and is logged at debug once per path (bounded set).
* :func:`info_from_annotations`, :func:`labels_from_annotations` -- OCI annotations
  (CRI, CRI-O, the user's own) -> ContainerInfo, for the runc and bundle readers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

log = logging.getLogger(__name__)

HEX64 = r"[0-9a-f]{64}"


class Runtime(StrEnum):
    DOCKER = "docker"
    CONTAINERD = "containerd"
    CRIO = "cri-o"
    PODMAN = "podman"
    RUNC = "runc"
    UNKNOWN = "unknown"  # a container id in the path, but no reader knows it


class QoS(StrEnum):
    GUARANTEED = "guaranteed"
    BURSTABLE = "burstable"
    BESTEFFORT = "besteffort"


@dataclass(frozen=True, slots=True)
class CgroupMatch:
    """What a cgroup path says.  ``runtime`` is None when the layout does not name it
    (kubelet cgroupfs ``/kubepods/<qos>/pod<uid>/<id>``, a bare id below an unknown
    parent): every reader is then asked."""

    runtime: Runtime | None
    container_id: str
    pod_uid: str | None = None
    qos: QoS | None = None
    namespace: str | None = None  # containerd namespace (ctr layout)


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What a runtime's state files say about one container (None: not known)."""

    runtime: Runtime
    name: str | None = None
    image: str | None = None
    image_digest: str | None = None
    pod_namespace: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    # docker / podman labels, OCI annotations of runc and bundle containers, CRI-O's
    # container labels; pod_labels: the pod's (CRI-O sandbox, podman pod, dockershim).
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    pod_labels: Mapping[str, str] = field(default_factory=dict, hash=False)


class ContainerRuntime(Protocol):
    """Reads one runtime's state files.  Implementations never raise for missing or
    malformed files; they return None so the caller can retry."""

    @property
    def kind(self) -> Runtime: ...

    def inspect(self, match: CgroupMatch) -> ContainerInfo | None: ...


class StateFiles:
    """JSON file reads relative to a host root; failures logged at debug once."""

    def __init__(self, host_root: str = "/", max_logged: int = 4096) -> None:
        self.host_root = host_root
        self._logged: set[str] = set()
        self._max_logged = max_logged

    def host(self, path: str) -> str:
        return path if self.host_root == "/" else os.path.join(self.host_root, path.lstrip("/"))

    def json(self, path: str) -> Any:
        """Parsed JSON of *path* (already a host path), or None."""
        try:
            with open(path, "rb") as fh:
                return json.load(fh)
        except (OSError, ValueError) as err:
            self.note(path, err)
            return None

    def note(self, key: str, err: BaseException) -> None:
        if key not in self._logged and len(self._logged) < self._max_logged:
            self._logged.add(key)
            missing = isinstance(err, OSError) and err.errno == errno.ENOENT
            log.debug("runtime state %s", "missing" if missing else "unreadable",
                      extra={"path": key, "error": str(err)})


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def as_digest(value: str | None) -> str | None:
    if value and re.fullmatch(HEX64, value):
        return f"sha256:{value}"
    return value


def info_from_annotations(
    runtime: Runtime, annotations: Mapping[str, str], fallback_name: str | None
) -> ContainerInfo:
    """ContainerInfo from OCI annotations written by CRI (containerd), CRI-O or a user."""
    a = annotations
    name = (a.get("io.kubernetes.cri.container-name") or a.get("io.kubernetes.container.name")
            or fallback_name)
    if a.get("io.kubernetes.cri.container-type") == "sandbox" or \
            a.get("io.kubernetes.cri-o.ContainerType") == "sandbox":
        name = "POD"  # the pod's sandbox (pause) container, as kubelet names it
    image = (a.get("io.kubernetes.cri.image-name") or a.get("io.kubernetes.cri-o.ImageName")
             or a.get("org.opencontainers.image.ref.name"))
    digest = a.get("io.kubernetes.cri.image-id") or a.get("io.kubernetes.cri-o.ImageRef")
    labels = labels_from_annotations(a)
    sandbox = (a.get("io.kubernetes.cri.container-type") == "sandbox"
               or a.get("io.kubernetes.cri-o.ContainerType") == "sandbox")
    return ContainerInfo(
        runtime=runtime, name=name, image=image or None, image_digest=as_digest(digest),
        pod_namespace=a.get("io.kubernetes.cri.sandbox-namespace")
        or a.get("io.kubernetes.pod.namespace"),
        pod_name=a.get("io.kubernetes.cri.sandbox-name") or a.get("io.kubernetes.pod.name"),
        pod_uid=a.get("io.kubernetes.cri.sandbox-uid") or a.get("io.kubernetes.pod.uid"),
        labels=labels, pod_labels=labels if sandbox else {},
    )


# Annotations a runtime writes for itself, not labels a user gave the container.
_RUNTIME_ANNOTATIONS = ("io.kubernetes.", "io.container.manager", "io.podman.annotations.",
                        "org.opencontainers.image.stopSignal")


def labels_from_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    """Container labels in OCI annotations: CRI-O's ``io.kubernetes.cri-o.Labels`` (JSON,
    the CRI labels: kubelet's for a container, the pod's for a sandbox) and the user's own
    annotations (``runc`` bundles, ``ctr run --annotation``). CRI / CRI-O bookkeeping
    (``io.kubernetes.*``) and podman's are not labels."""
    out = {k: v for k, v in annotations.items() if not k.startswith(_RUNTIME_ANNOTATIONS)}
    raw = annotations.get("io.kubernetes.cri-o.Labels")
    if raw:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            out.update({str(k): str(v) for k, v in doc.items()})
    return out
