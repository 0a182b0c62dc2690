"""Cgroup v2 path -> :class:`~moray.agent.enrich.runtimes.base.CgroupMatch`: pure parsing.

:func:`parse_cgroup_path` knows every layout the runtimes produce with the cgroupfs and the
systemd drivers (docker, containerd/CRI, CRI-O, podman, kubelet pod slices and QoS
classes, ctr/nerdctl ``/<namespace>/<id>``), also below a prefix (the agent itself in a
container, docker-in-docker); the innermost container wins. A plain runc container's
cgroup names nothing: ``runc.py`` finds those through runc's state files. No state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from moray.agent.enrich.runtimes.base import HEX64, CgroupMatch, QoS, Runtime

_SCOPED = re.compile(rf"^(docker|cri-containerd|crio|libpod)-({HEX64})(?:\.scope)?$")
_CONMON = re.compile(r"^(?:(?:libpod|crio)-conmon-[0-9a-f]+(?:\.scope)?|conmon)$")
_BARE_ID = re.compile(rf"^{HEX64}$")
_UID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
# kind / kubelet-in-docker nest the same slices under a "kubelet-" prefix.
_POD_SLICE = re.compile(
    rf"^(?:kubelet-)?kubepods(?:-(burstable|besteffort))?-pod({_UID})\.slice$")
_POD_DIR = re.compile(rf"^pod({_UID})$")
# ctr / nerdctl put a container at /<namespace>/<id>; only these parents are trusted.
DEFAULT_CONTAINERD_NAMESPACES = frozenset({"default", "k8s.io"})


_PREFIX_RUNTIME = {"docker": Runtime.DOCKER, "cri-containerd": Runtime.CONTAINERD,
                   "crio": Runtime.CRIO, "libpod": Runtime.PODMAN}


def parse_cgroup_path(
    path: str, containerd_namespaces: frozenset[str] = DEFAULT_CONTAINERD_NAMESPACES
) -> CgroupMatch | None:
    """Container identity encoded in a cgroup v2 path, or None (host, or conmon)."""
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 1, -1, -1):
        comp = parts[i]
        parent = parts[i - 1] if i else ""
        if _CONMON.match(comp):
            continue  # podman's / CRI-O's monitor process: not the container
        if m := _SCOPED.match(comp):
            runtime: Runtime | None = _PREFIX_RUNTIME[m.group(1)]
            cid = m.group(2)
        elif _BARE_ID.match(comp) and parent == "docker":
            runtime, cid = Runtime.DOCKER, comp
        elif parent in containerd_namespaces:
            return CgroupMatch(Runtime.CONTAINERD, comp, namespace=parent)
        elif _BARE_ID.match(comp):
            runtime, cid = None, comp  # kubelet cgroupfs, or a custom --cgroup-parent
        else:
            continue
        pod_uid, qos = _pod_of(parts[:i])
        return CgroupMatch(runtime, cid, pod_uid, qos)
    return None


def _pod_of(parents: Sequence[str]) -> tuple[str | None, QoS | None]:
    """Pod uid and QoS class from the components above a container."""
    for j in range(len(parents) - 1, -1, -1):
        if m := _POD_SLICE.match(parents[j]):
            return m.group(2).replace("_", "-"), QoS(m.group(1) or QoS.GUARANTEED)
        if (m := _POD_DIR.match(parents[j])) and any("kubepods" in p for p in parents[:j]):
            above = parents[j - 1]
            qos = QoS(above) if above in ("burstable", "besteffort") else QoS.GUARANTEED
            return m.group(1).replace("_", "-"), qos
    return None, None
