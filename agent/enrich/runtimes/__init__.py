"""Which container a cgroup belongs to, and what its runtime's state files say about it.

Two layers, both without network calls or runtime APIs (no daemon sockets):

* ``parse.py`` -- pure parsing of a cgroup v2 path into a :class:`CgroupMatch` (runtime,
  container id, pod uid, QoS class) for every layout the runtimes produce.
* :class:`ContainerRuntime` readers -- one module per runtime -- that read the runtime's
  own state files into a :class:`ContainerInfo` (name, image, image digest, pod, labels):
  ``docker.py`` (``config.v2.json``), ``podman.py`` (``containers.json``, libpod's bolt
  database), ``runc.py`` (``state.json``; also the cgroup -> container index for plain
  runc containers, whose cgroup path names nothing), ``bundle.py`` (OCI bundle
  ``config.json`` annotations of containerd/CRI and CRI-O). ``base.py`` holds the records,
  the Protocol and the shared file/annotation helpers; ``registry.py`` wires one reader
  per runtime for a standard host (:func:`default_runtimes`).

A missing or unreadable state file is not an error: ``inspect`` returns None (the
resolver retries a little later, because state files appear a few ms after the cgroup)
and it is logged at debug once. Host paths are injectable (``host_root``, ``proc``): a
DaemonSet sees the host at /host. Readers are not thread-safe; the resolver calls them
from one thread.
"""

from moray.agent.enrich.runtimes.base import (
    HEX64,
    CgroupMatch,
    ContainerInfo,
    ContainerRuntime,
    QoS,
    Runtime,
    info_from_annotations,
    labels_from_annotations,
)
from moray.agent.enrich.runtimes.bundle import CONTAINERD_BUNDLES, CRIO_BUNDLES, OciBundleRuntime
from moray.agent.enrich.runtimes.docker import DockerDaemon, DockerRuntime, find_dockerds
from moray.agent.enrich.runtimes.parse import DEFAULT_CONTAINERD_NAMESPACES, parse_cgroup_path
from moray.agent.enrich.runtimes.podman import PodmanRuntime
from moray.agent.enrich.runtimes.registry import default_runtimes
from moray.agent.enrich.runtimes.runc import (
    CGROUP2_MOUNTS,
    DEFAULT_RUNC_ROOTS,
    RuncRoot,
    RuncRuntime,
)

__all__ = [
    "CGROUP2_MOUNTS",
    "CONTAINERD_BUNDLES",
    "CRIO_BUNDLES",
    "DEFAULT_CONTAINERD_NAMESPACES",
    "DEFAULT_RUNC_ROOTS",
    "HEX64",
    "CgroupMatch",
    "ContainerInfo",
    "ContainerRuntime",
    "DockerDaemon",
    "DockerRuntime",
    "OciBundleRuntime",
    "PodmanRuntime",
    "QoS",
    "RuncRoot",
    "RuncRuntime",
    "Runtime",
    "default_runtimes",
    "find_dockerds",
    "info_from_annotations",
    "labels_from_annotations",
    "parse_cgroup_path",
]
