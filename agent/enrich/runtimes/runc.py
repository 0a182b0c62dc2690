"""runc: which container a cgroup belongs to when its path names none, and its annotations.

:class:`RuncRuntime` keeps a reverse index (cgroup path -> runc ``state.json``) built from
the ``--root`` directories of plain runc, docker and containerd. The index changes on a
miss (``find`` or ``inspect`` of an unknown cgroup or id): the roots are listed again,
only new state files are read, and entries whose state file is gone are dropped.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from moray.agent.enrich.runtimes.base import (
    CgroupMatch,
    ContainerInfo,
    Runtime,
    StateFiles,
    as_str,
    info_from_annotations,
)

# Where runc-like runtimes put the cgroup v2 hierarchy, longest first (hybrid, unified).
CGROUP2_MOUNTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class RuncRoot:
    """A runc ``--root`` directory (``*`` = one directory per namespace) and whose
    containers live there."""

    path: str
    runtime: Runtime


DEFAULT_RUNC_ROOTS = (
    RuncRoot("/run/runc", Runtime.RUNC),  # plain runc; CRI-O and podman use it too
    RuncRoot("/run/docker/runtime-runc/*", Runtime.DOCKER),
    RuncRoot("/run/containerd/runc/*", Runtime.CONTAINERD),
)


@dataclass(frozen=True, slots=True)
class _RuncState:
    runtime: Runtime
    container_id: str
    namespace: str | None
    state_file: str


class RuncRuntime:
    """runc ``state.json`` files: cgroup path -> container, and annotations -> info.

    ``find(cgroup_path)`` rescans the roots (listdir, reading only new state files);
    ``extra_roots`` adds roots found at run time (docker's ``--exec-root``).
    """

    kind = Runtime.RUNC

    def __init__(self, roots: Sequence[RuncRoot] = DEFAULT_RUNC_ROOTS, host_root: str = "/",
                 extra_roots: Callable[[], Iterable[RuncRoot]] | None = None,
                 cgroup_mounts: Sequence[str] = CGROUP2_MOUNTS) -> None:
        self._roots = tuple(roots)
        self._extra_roots = extra_roots
        self._files = StateFiles(host_root)
        self._mounts = tuple(m.rstrip("/") for m in cgroup_mounts)
        self._by_cgroup: dict[str, _RuncState] = {}
        self._by_id: dict[str, _RuncState] = {}
        self._seen: set[str] = set()

    def find(self, cgroup_path: str) -> CgroupMatch | None:
        """The runc-managed container whose cgroup is *cgroup_path*, rescanning on a miss."""
        state = self._by_cgroup.get(cgroup_path)
        if state is None:
            self.rescan()
            state = self._by_cgroup.get(cgroup_path)
        if state is None:
            return None
        return CgroupMatch(state.runtime, state.container_id, namespace=state.namespace)

    def rescan(self) -> None:
        roots = [(self._files.host(r.path), r) for r in self._roots]
        if self._extra_roots is not None:  # already paths the agent can open
            roots.extend((r.path, r) for r in self._extra_roots())
        present: set[str] = set()
        for pattern, root in roots:
            for directory in glob.glob(pattern):
                namespace = os.path.basename(directory) if root.path.endswith("*") else None
                try:
                    names = os.listdir(directory)
                except OSError as err:
                    self._files.note(directory, err)
                    continue
                for cid in names:
                    state_file = os.path.join(directory, cid, "state.json")
                    present.add(state_file)
                    if state_file not in self._seen:
                        self._index(state_file, root.runtime, cid, namespace)
        for gone in self._seen - present:
            self._seen.discard(gone)
        for key, st in list(self._by_cgroup.items()):
            if st.state_file not in present:
                del self._by_cgroup[key]
                self._by_id.pop(st.container_id, None)

    def _index(self, state_file: str, runtime: Runtime, cid: str, ns: str | None) -> None:
        state = self._files.json(state_file)
        if not isinstance(state, dict):
            return  # not written yet (runc writes it after create): retried next rescan
        self._seen.add(state_file)
        paths = state.get("cgroup_paths")
        unified = as_str(paths.get("")) if isinstance(paths, dict) else None
        if unified is None:
            return
        entry = _RuncState(runtime, cid, ns, state_file)
        self._by_cgroup[self.relative_cgroup(unified)] = entry
        self._by_id[cid] = entry

    def relative_cgroup(self, absolute: str) -> str:
        """``/sys/fs/cgroup/unified/a/b`` -> ``/a/b`` (path below the v2 root)."""
        for mount in self._mounts:
            if absolute == mount or absolute.startswith(mount + "/"):
                return absolute[len(mount):] or "/"
        return absolute

    def inspect(self, match: CgroupMatch) -> ContainerInfo | None:
        entry = self._by_id.get(match.container_id)
        if entry is None:
            self.rescan()
            entry = self._by_id.get(match.container_id)
        if entry is None:
            return None
        state = self._files.json(entry.state_file)
        if not isinstance(state, dict):
            return None
        config = state.get("config")
        labels = config.get("labels") if isinstance(config, dict) else None
        annotations: dict[str, str] = {}
        for label in labels if isinstance(labels, list) else ():
            key, sep, value = str(label).partition("=")
            if sep and key != "bundle":
                annotations[key] = value
        return info_from_annotations(entry.runtime, annotations, match.container_id)
