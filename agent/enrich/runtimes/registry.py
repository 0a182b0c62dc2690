"""The readers a standard host gets (state under /run and /var/lib), in the order
:func:`default_runtimes` returns them; the docker reader feeds the runc reader its roots."""

from __future__ import annotations

from moray.agent.enrich.runtimes.base import ContainerRuntime, Runtime
from moray.agent.enrich.runtimes.bundle import CONTAINERD_BUNDLES, CRIO_BUNDLES, OciBundleRuntime
from moray.agent.enrich.runtimes.docker import DockerRuntime
from moray.agent.enrich.runtimes.podman import PodmanRuntime
from moray.agent.enrich.runtimes.runc import RuncRuntime


def default_runtimes(proc: str = "/proc", host_root: str = "/") -> list[ContainerRuntime]:
    """One reader per runtime, wired for a standard host (state under /run, /var/lib)."""
    docker = DockerRuntime(proc=proc, host_root=host_root)
    return [
        docker,
        OciBundleRuntime(Runtime.CONTAINERD, CONTAINERD_BUNDLES, host_root),
        OciBundleRuntime(Runtime.CRIO, CRIO_BUNDLES, host_root),
        PodmanRuntime(host_root=host_root),
        RuncRuntime(host_root=host_root, extra_roots=docker.runc_roots),
    ]
