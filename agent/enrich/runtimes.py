"""Which container a cgroup belongs to, and what its runtime's state files say about it.

Two layers, both without network calls or runtime APIs (no daemon sockets):

* :func:`parse_cgroup_path` -- pure parsing of a cgroup v2 path into a
  :class:`CgroupMatch` (runtime, container id, pod uid, QoS class) for every layout the
  runtimes produce with the cgroupfs and the systemd drivers, also below a prefix (the
  agent itself in a container, docker-in-docker).  The innermost container wins.
* :class:`ContainerRuntime` readers -- one per runtime -- that read the runtime's own state
  files (runc ``state.json``, docker ``config.v2.json``, podman ``containers.json``, OCI
  bundle ``config.json`` annotations of containerd/CRI and CRI-O) into a
  :class:`ContainerInfo` (name, image, image digest, pod).  A missing or unreadable state
  file is not an error: ``inspect`` returns None (the resolver retries a little later,
  because state files appear a few ms after the cgroup) and it is logged at debug once.

A plain runc container's cgroup is ``<caller's cgroup>/<id>``: nothing in the path says
"container", so :class:`RuncRuntime` keeps a reverse index (cgroup path -> runc state)
built from the state directories of runc, docker and containerd.

Host paths are injectable (``host_root``, ``proc``): a DaemonSet sees the host at /host.
Readers are not thread-safe; the resolver calls them from one thread.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from moray.agent.enrich.boltdb import BoltError, BoltFile

log = logging.getLogger(__name__)

HEX64 = r"[0-9a-f]{64}"
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
# Where runc-like runtimes put the cgroup v2 hierarchy, longest first (hybrid, unified).
CGROUP2_MOUNTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


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


_PREFIX_RUNTIME = {"docker": Runtime.DOCKER, "cri-containerd": Runtime.CONTAINERD,
                   "crio": Runtime.CRIO, "libpod": Runtime.PODMAN}


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


# --------------------------------------------------------------------------- parsing


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


# --------------------------------------------------------------------------- file helpers


class _Files:
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


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _str_map(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _json_obj(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as err:
        raise BoltError(f"not JSON: {err}") from err
    return doc if isinstance(doc, dict) else {}


def _digest(value: str | None) -> str | None:
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
        runtime=runtime, name=name, image=image or None, image_digest=_digest(digest),
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


def _annotations(obj: object) -> dict[str, str]:
    if not isinstance(obj, dict):
        return {}
    ann = obj.get("annotations")
    if not isinstance(ann, dict):
        return {}
    return {str(k): str(v) for k, v in ann.items()}


# --------------------------------------------------------------------------- runc


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
        self._files = _Files(host_root)
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
        unified = _str(paths.get("")) if isinstance(paths, dict) else None
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


# --------------------------------------------------------------------------- docker


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
    files = _Files(host_root)
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
        data = opts.get("data-root") or _str(conf.get("data-root")) or "/var/lib/docker"
        exe = opts.get("exec-root") or _str(conf.get("exec-root")) or "/run/docker"
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
        self._files = _Files(host_root)
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
        name = _str(doc.get("Name"))
        return ContainerInfo(
            runtime=Runtime.DOCKER, name=name.lstrip("/") if name else None,
            image=_str(config.get("Image")), image_digest=_str(doc.get("Image")),
            pod_namespace=_str(labels.get("io.kubernetes.pod.namespace")),
            pod_name=_str(labels.get("io.kubernetes.pod.name")),
            pod_uid=_str(labels.get("io.kubernetes.pod.uid")),
            labels=labels,
        )


# --------------------------------------------------------------------------- podman


class PodmanRuntime:
    """podman (containers/storage): ``<root>/<driver>-containers/containers.json`` for
    the container's names and image id, ``<driver>-images/images.json`` for the image's
    names, libpod's ``<root>/libpod/bolt_state.db`` for container and pod labels.  The
    files are re-parsed only when their mtime changes."""

    kind = Runtime.PODMAN

    def __init__(self, storage_root: str = "/var/lib/containers/storage",
                 host_root: str = "/") -> None:
        self._files = _Files(host_root)
        self._root = self._files.host(storage_root)
        self._cache: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}
        self._bolt: tuple[int, BoltFile] | None = None

    def _table(self, kind: str) -> dict[str, dict[str, Any]]:
        """id -> entry of every ``*-<kind>/<kind>.json`` under the storage root."""
        table: dict[str, dict[str, Any]] = {}
        for path in glob.glob(os.path.join(self._root, f"*-{kind}", f"{kind}.json")):
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError as err:
                self._files.note(path, err)
                continue
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                doc = self._files.json(path)
                rows = {str(e["id"]): e for e in doc if isinstance(e, dict) and "id" in e} \
                    if isinstance(doc, list) else {}
                cached = (mtime, rows)
                self._cache[path] = cached
            table.update(cached[1])
        return table

    def inspect(self, match: CgroupMatch) -> ContainerInfo | None:
        entry = self._table("containers").get(match.container_id)
        if entry is None:
            return None
        names = entry.get("names")
        name = _str(names[0]) if isinstance(names, list) and names else None
        image_id = _str(entry.get("image"))
        image = None
        try:
            meta = json.loads(entry.get("metadata") or "{}")
        except (TypeError, ValueError):
            meta = {}
        if isinstance(meta, dict):
            image = _str(meta.get("image-name"))
        if image is None and image_id:
            img_names = self._table("images").get(image_id, {}).get("names")
            image = _str(img_names[0]) if isinstance(img_names, list) and img_names else None
        labels = self._labels(match.container_id)
        if labels is None:
            return None  # libpod's database caught mid-write: the resolver retries
        return ContainerInfo(Runtime.PODMAN, name=name, image=image,
                             image_digest=_digest(image_id), labels=labels[0],
                             pod_labels=labels[1])

    def _labels(self, cid: str) -> tuple[dict[str, str], dict[str, str]] | None:
        """Labels of the container and of its pod, from libpod's bolt database
        (``<root>/libpod/bolt_state.db``: ``ctr/<id>/config``, ``pod/<id>/config``),
        re-read when its mtime changes.  No database (another libpod backend): no labels;
        an inconsistent one (mid-write): None."""
        path = os.path.join(self._root, "libpod", "bolt_state.db")
        try:
            mtime = os.stat(path).st_mtime_ns
            if self._bolt is None or self._bolt[0] != mtime:
                self._bolt = (mtime, BoltFile.open(path))
            db = self._bolt[1]
            ctr = _json_obj(db.get([b"ctr", cid.encode()], b"config"))
            pod_id = _str(ctr.get("pod"))
            pod = _json_obj(db.get([b"pod", pod_id.encode()], b"config")) if pod_id else {}
        except OSError as err:
            self._files.note(path, err)
            return {}, {}
        except BoltError as err:
            self._bolt = None
            self._files.note(path, err)
            return None
        return _str_map(ctr.get("labels")), _str_map(pod.get("labels"))


# --------------------------------------------------------------------------- OCI bundles


CONTAINERD_BUNDLES = ("/run/containerd/io.containerd.runtime.v2.task/{ns}/{id}/config.json",)
CRIO_BUNDLES = ("/run/containers/storage/overlay-containers/{id}/userdata/config.json",)


class OciBundleRuntime:
    """An OCI bundle's ``config.json`` annotations (containerd + CRI, CRI-O).

    *patterns* hold ``{id}`` and ``{ns}`` (the containerd namespace; ``*`` when the cgroup
    path did not name it).  Without annotations (plain ``ctr run``) the name is the id and
    the image is unknown: containerd keeps images in its bolt database, not in files.
    """

    def __init__(self, kind: Runtime, patterns: Sequence[str], host_root: str = "/") -> None:
        self._kind = kind
        self._patterns = tuple(patterns)
        self._files = _Files(host_root)

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
