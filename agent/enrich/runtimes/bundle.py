"""containerd (CRI) and CRI-O: a container's OCI bundle ``config.json`` annotations.

Both runtimes write the same kind of bundle and differ only in where it lives, so one
reader, :class:`OciBundleRuntime`, serves both with their path patterns
(:data:`CONTAINERD_BUNDLES`, :data:`CRIO_BUNDLES`). No state: every ``inspect`` reads the
bundle (and, for CRI-O, the pod sandbox's bundle for the pod's labels).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import replace

from moray.agent.enrich.runtimes.base import (
    CgroupMatch,
    ContainerInfo,
    Runtime,
    StateFiles,
    info_from_annotations,
    labels_from_annotations,
)

CONTAINERD_BUNDLES = ("/run/containerd/io.containerd.runtime.v2.task/{ns}/{id}/config.json",)
CRIO_BUNDLES = ("/run/containers/storage/overlay-containers/{id}/userdata/config.json",)


def _annotations(obj: object) -> dict[str, str]:
    if not isinstance(obj, dict):
        return {}
    ann = obj.get("annotations")
    if not isinstance(ann, dict):
        return {}
    return {str(k): str(v) for k, v in ann.items()}


class OciBundleRuntime:
    """An OCI bundle's ``config.json`` annotations (containerd + CRI, CRI-O).

    *patterns* hold ``{id}`` and ``{ns}`` (the containerd namespace; ``*`` when the cgroup
    path did not name it).  Without annotations (plain ``ctr run``) the name is the id and
    the image is unknown: containerd keeps images in its bolt database, not in files.
    """

    def __init__(self, kind: Runtime, patterns: Sequence[str], host_root: str = "/") -> None:
        self._kind = kind
        self._patterns = tuple(patterns)
        self._files = StateFiles(host_root)

    @property
    def kind(self) -> Runtime:
        return self._kind

    def inspect(self, match: CgroupMatch) -> ContainerInfo | None:
        annotations = self._bundle(match.container_id, match.namespace)
        if annotations is None:
            return None
        info = info_from_annotations(self._kind, annotations, match.container_id)
        # CRI-O: the pod's labels are its sandbox's CRI labels (another bundle)
        sandbox = annotations.get("io.kubernetes.cri-o.SandboxID")
        if sandbox and not info.pod_labels and sandbox != match.container_id:
            pod = self._bundle(sandbox, match.namespace)
            if pod is not None:
                info = replace(info, pod_labels=labels_from_annotations(pod))
        return info

    def _bundle(self, cid: str, namespace: str | None) -> dict[str, str] | None:
        """Annotations of the bundle of *cid*, or None when no bundle is there."""
        for pattern in self._patterns:
            path = self._files.host(pattern.format(id=cid, ns=namespace or "*"))
            for candidate in sorted(glob.glob(path)) if "*" in path else (path,):
                doc = self._files.json(candidate)
                if isinstance(doc, dict):
                    return _annotations(doc)
        return None
