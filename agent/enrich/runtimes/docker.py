"""docker: the running dockerds' state directories and each container's ``config.v2.json``.

:func:`find_dockerds` reads /proc for dockerd processes and their ``--data-root`` /
``--exec-root`` (also in another mount namespace). :class:`DockerRuntime` reads a
container's name, image, image id and labels (pod labels from its sandbox for
dockershim / cri-dockerd); it rediscovers the daemons on a miss, at most every
``rediscover_s``, and gives :class:`~moray.agent.enrich.runtimes.runc.RuncRuntime` their
runc roots.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from moray.agent.enrich.runtimes.base import (
    HEX64,
    CgroupMatch,
    ContainerInfo,
    Runtime,
    StateFiles,
    as_str,
)
from moray.agent.enrich.runtimes.runc import RuncRoot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DockerDaemon:
    """Where one dockerd keeps its state, as paths the agent can open."""

    data_root: str
    exec_root: str


def find_dockerds(proc: str = "/proc", host_root: str = "/") -> list[DockerDaemon]:
    """Running dockerd processes and their ``--data-root`` / ``--exec-root``.

    Reads ``<proc>/<pid>/comm`` and ``cmdline`` directly rather than through psutil,
    whose /proc location is process-global (``psutil.PROCFS_PATH``) and so cannot follow
    an injected *proc*.  Paths are opened through ``<proc>/<pid>/root`` so a dockerd in
    another mount namespace (docker-in-docker, the agent in a DaemonSet) is read right.
    """
    daemons: list[DockerDaemon] = []
    files = StateFiles(host_root)
    for pid in (p for p in os.listdir(proc) if p.isdigit()):
        try:
            with open(f"{proc}/{pid}/comm", "rb") as fh:
                if fh.read().strip() != b"dockerd":
                    continue
            with open(f"{proc}/{pid}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            continue  # exited meanwhile
        opts = _dockerd_options(argv)
        root = f"{proc}/{pid}/root"
        conf = files.json(root + opts.get("config-file", "/etc/docker/daemon.json"))
        conf = conf if isinstance(conf, dict) else {}
        data = opts.get("data-root") or as_str(conf.get("data-root")) or "/var/lib/docker"
        exe = opts.get("exec-root") or as_str(conf.get("exec-root")) or "/run/docker"
        daemons.append(DockerDaemon(root + data, root + exe))
    return daemons


def _dockerd_options(argv: Sequence[str]) -> dict[str, str]:
    aliases = {"-g": "data-root", "--graph": "data-root", "--data-root": "data-root",
               "--exec-root": "exec-root", "--config-file": "config-file"}
    opts: dict[str, str] = {}
    it = iter(argv[1:])
    for arg in it:
        key, sep, value = arg.partition("=")
        if key in aliases:
            opts[aliases[key]] = value if sep else next(it, "")
    return opts


class DockerRuntime:
    """docker's ``<data-root>/containers/<id>/config.v2.json``: Name, Config.Image, Image.

    Data roots are given, or discovered from running dockerd processes (again on a miss,
    at most every ``rediscover_s``), falling back to /var/lib/docker.  The image digest
    is the image id (sha256 of the image config), which docker records per container.
    """

    kind = Runtime.DOCKER

    def __init__(self, daemons: Sequence[DockerDaemon] | None = None, proc: str = "/proc",
                 host_root: str = "/", rediscover_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._files = StateFiles(host_root)
        self._proc = proc
        self._fixed = daemons is not None
        self._daemons: list[DockerDaemon] = list(daemons or [])
        self._rediscover_s = rediscover_s
        self._clock = clock
        self._last_discovery: float | None = None

    def daemons(self) -> list[DockerDaemon]:
        if not self._fixed and self._last_discovery is None:
            self._discover()
        return self._daemons

    def _discover(self) -> None:
        self._last_discovery = self._clock()
        found = find_dockerds(self._proc, self._files.host_root)
        default = self._files.host("/var/lib/docker"), self._files.host("/run/docker")
        self._daemons = found or [DockerDaemon(*default)]
        log.debug("docker daemons", extra={"daemons": [d.data_root for d in self._daemons]})

    def runc_roots(self) -> list[RuncRoot]:
        """runc state directories of the known daemons (for :class:`RuncRuntime`)."""
        return [RuncRoot(os.path.join(d.exec_root, "runtime-runc", "*"), Runtime.DOCKER)
                for d in self.daemons()]

    def inspect(self, match: CgroupMatch) -> ContainerInfo | None:
        info = self._read(match.container_id)
        if info is None and not self._fixed and (
                self._last_discovery is None
                or self._clock() - self._last_discovery >= self._rediscover_s):
            self._discover()
            info = self._read(match.container_id)
        return info

    def _read(self, cid: str) -> ContainerInfo | None:
        for daemon in self.daemons():
            doc = self._config(daemon, cid)
            if doc is None:
                continue
            info = self._info(doc)
            # dockershim / cri-dockerd: the pod's labels are its sandbox container's
            sandbox = info.labels.get("io.kubernetes.sandbox.id")
            if sandbox and re.fullmatch(HEX64, sandbox) and sandbox != cid:
                pod = self._config(daemon, sandbox)
                if pod is not None:
                    info = replace(info, pod_labels=self._info(pod).labels)
            elif info.labels.get("io.kubernetes.docker.type") == "podsandbox":
                info = replace(info, pod_labels=info.labels)
            return info
        return None

    def _config(self, daemon: DockerDaemon, cid: str) -> dict[str, Any] | None:
        doc = self._files.json(os.path.join(daemon.data_root, "containers", cid,
                                            "config.v2.json"))
        return doc if isinstance(doc, dict) else None

    @staticmethod
    def _info(doc: dict[str, Any]) -> ContainerInfo:
        config = doc.get("Config")
        config = config if isinstance(config, dict) else {}
        raw = config.get("Labels")
        labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        name = as_str(doc.get("Name"))
        return ContainerInfo(
            runtime=Runtime.DOCKER, name=name.lstrip("/") if name else None,
            image=as_str(config.get("Image")), image_digest=as_str(doc.get("Image")),
            pod_namespace=as_str(labels.get("io.kubernetes.pod.namespace")),
            pod_name=as_str(labels.get("io.kubernetes.pod.name")),
            pod_uid=as_str(labels.get("io.kubernetes.pod.uid")),
            labels=labels,
        )
