"""runc: which container a cgroup belongs to when its path names none, and its annotations.

:class:`RuncRuntime` keeps a reverse index (cgroup path -> runc ``state.json``) built from
the ``--root`` directories of plain runc, docker and containerd. The index changes:

- on a miss (``find`` or ``inspect`` of an unknown cgroup or id): the roots are listed
  again and only new state files are read;
- as soon as a state file is written, when :meth:`RuncRuntime.start_watch` runs (an
  inotify thread on the roots): the enrichment thread may be seconds behind the kernel (a
  start-up backlog, a storm), and a short-lived container's state is deleted by ``runc
  delete`` before its events are enriched; read at write time, the container is named;
- entries whose state file is gone are kept ``keep_gone`` seconds (default 60) for the
  events still queued, then dropped. A new container with the same cgroup path replaces
  the entry when its state is read.

The state (annotations) is read once, when indexed: runc never changes a container's
config after create.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from moray.agent.enrich.runtimes.base import (
    CgroupMatch,
    ContainerInfo,
    Runtime,
    StateFiles,
    as_str,
    info_from_annotations,
)

log = logging.getLogger(__name__)

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


@dataclass(slots=True)
class _RuncState:
    runtime: Runtime
    container_id: str
    namespace: str | None
    state_file: str
    annotations: dict[str, str] = field(default_factory=dict)
    gone_at: float | None = None   # when its state file was found deleted


class RuncRuntime:
    """runc ``state.json`` files: cgroup path -> container, and annotations -> info.

    ``find(cgroup_path)`` rescans the roots on a miss (listdir, reading only new state
    files); ``start_watch`` rescans on every change below the roots; ``extra_roots`` adds
    roots found at run time (docker's ``--exec-root``). Thread-safe: the watcher, the
    event pipeline and the policy engine share it.
    """

    kind = Runtime.RUNC

    def __init__(self, roots: Sequence[RuncRoot] = DEFAULT_RUNC_ROOTS, host_root: str = "/",
                 extra_roots: Callable[[], Iterable[RuncRoot]] | None = None,
                 cgroup_mounts: Sequence[str] = CGROUP2_MOUNTS, *, keep_gone: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._roots = tuple(roots)
        self._extra_roots = extra_roots
        self._files = StateFiles(host_root)
        self._mounts = tuple(m.rstrip("/") for m in cgroup_mounts)
        self._by_cgroup: dict[str, _RuncState] = {}
        self._by_id: dict[str, _RuncState] = {}
        self._seen: set[str] = set()
        self.keep_gone = keep_gone
        self._clock = clock
        self._lock = threading.RLock()
        self._watcher: _Watcher | None = None

    def find(self, cgroup_path: str) -> CgroupMatch | None:
        """The runc-managed container whose cgroup is *cgroup_path*, rescanning on a miss."""
        with self._lock:
            state = self._by_cgroup.get(cgroup_path)
            if state is None:
                self.rescan()
                state = self._by_cgroup.get(cgroup_path)
            if state is None:
                return None
            return CgroupMatch(state.runtime, state.container_id, namespace=state.namespace)

    def _patterns(self) -> list[tuple[str, RuncRoot]]:
        roots = [(self._files.host(r.path), r) for r in self._roots]
        if self._extra_roots is not None:  # already paths the agent can open
            roots.extend((r.path, r) for r in self._extra_roots())
        return roots

    def directories(self) -> list[str]:
        """The root directories that exist now (one per namespace for ``*`` roots)."""
        return sorted({d for pattern, _ in self._patterns() for d in glob.glob(pattern)})

    def rescan(self) -> None:
        with self._lock:
            self._rescan()

    def _rescan(self) -> None:
        present: set[str] = set()
        for pattern, root in self._patterns():
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
        now = self._clock()
        for key, st in list(self._by_cgroup.items()):
            if st.state_file in present and st.gone_at is None:
                continue
            if st.gone_at is None:
                st.gone_at = now    # kept a while for the events still queued
            if now - st.gone_at >= self.keep_gone:
                del self._by_cgroup[key]
                if self._by_id.get(st.container_id) is st:
                    del self._by_id[st.container_id]

    def _index(self, state_file: str, runtime: Runtime, cid: str, ns: str | None) -> None:
        state = self._files.json(state_file)
        if not isinstance(state, dict):
            return  # not written yet (runc writes it after create): retried next rescan
        self._seen.add(state_file)
        paths = state.get("cgroup_paths")
        unified = as_str(paths.get("")) if isinstance(paths, dict) else None
        if unified is None:
            return
        entry = _RuncState(runtime, cid, ns, state_file, _annotations(state))
        self._by_cgroup[self.relative_cgroup(unified)] = entry
        self._by_id[cid] = entry

    def relative_cgroup(self, absolute: str) -> str:
        """``/sys/fs/cgroup/unified/a/b`` -> ``/a/b`` (path below the v2 root)."""
        for mount in self._mounts:
            if absolute == mount or absolute.startswith(mount + "/"):
                return absolute[len(mount):] or "/"
        return absolute

    def inspect(self, match: CgroupMatch) -> ContainerInfo | None:
        with self._lock:
            entry = self._by_id.get(match.container_id)
            if entry is None:
                self.rescan()
                entry = self._by_id.get(match.container_id)
            if entry is None:
                return None
            return info_from_annotations(entry.runtime, entry.annotations,
                                         match.container_id)

    # ----------------------------------------------------------------- watching

    def start_watch(self) -> bool:
        """Rescan whenever something changes below the roots (inotify), from a daemon
        thread; False (and find's rescans alone) when inotify is unavailable."""
        if self._watcher is not None:
            return True
        try:
            self._watcher = _Watcher(self)
        except OSError as err:
            log.warning("runc state not watched (names of short-lived containers may be "
                        "missed under load)", extra={"error": str(err)})
            return False
        self._watcher.start()
        return True

    def stop_watch(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None


def _annotations(state: dict[str, object]) -> dict[str, str]:
    config = state.get("config")
    labels = config.get("labels") if isinstance(config, dict) else None
    annotations: dict[str, str] = {}
    for label in labels if isinstance(labels, list) else ():
        key, sep, value = str(label).partition("=")
        if sep and key != "bundle":
            annotations[key] = value
    return annotations


class _Watcher(threading.Thread):
    """inotify on the runc roots and their container directories; any change -> rescan.

    Roots that appear later (a runtime started after the agent) are picked up every
    ``ROOTS_EVERY`` seconds. A queue overflow (IN_Q_OVERFLOW) only means a rescan, which
    reads every state file not indexed yet. The thread owns the inotify descriptor and
    closes it when it ends (``stop`` only asks), so the number is never reused under it."""

    ROOTS_EVERY = 5.0
    POLL_MS = 500

    def __init__(self, runtime: RuncRuntime) -> None:
        from inotify_simple import INotify

        super().__init__(name="moray-runc-watch", daemon=True)
        self._rt = runtime
        self._inotify = INotify()
        self._paths: dict[int, str] = {}      # watch descriptor -> directory
        self._watched: set[str] = set()
        self._stop = threading.Event()
        self._refresh()

    def _add(self, path: str) -> None:
        from inotify_simple import flags

        if path in self._watched:
            return
        mask = (flags.CREATE | flags.MOVED_TO | flags.CLOSE_WRITE | flags.DELETE
                | flags.ONLYDIR)
        try:
            wd = self._inotify.add_watch(path, mask)
        except OSError:
            return      # gone already, or not a directory: the next refresh sees it
        self._paths[wd] = path
        self._watched.add(path)

    def _refresh(self) -> None:
        for root in self._rt.directories():
            self._add(root)
            try:
                names = os.listdir(root)
            except OSError:
                continue
            for name in names:
                self._add(os.path.join(root, name))

    def run(self) -> None:
        from inotify_simple import flags

        last_roots = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    events = self._inotify.read(timeout=self.POLL_MS)
                except OSError as err:
                    log.warning("runc state watch failed", extra={"error": str(err)})
                    return
                for ev in events:
                    if ev.mask & flags.IGNORED:    # its directory was deleted
                        self._watched.discard(self._paths.pop(ev.wd, ""))
                if events or time.monotonic() - last_roots >= self.ROOTS_EVERY:
                    self._refresh()     # new container directories get their own watch
                    last_roots = time.monotonic()
                if events:
                    try:
                        self._rt.rescan()
                    except Exception:   # the watcher must go on: find() rescans anyway
                        log.exception("runc state rescan failed")
        finally:
            self._inotify.close()

    def stop(self) -> None:
        self._stop.set()
