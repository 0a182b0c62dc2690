"""Pinned BPF state in bpffs: enforcement that outlives the agent, adopted on restart.

Layout under ``/sys/fs/bpf/moray``::

    maps/<map name>          every map of moray.bpf.o (policy maps, the ring buffer the
                             enforcement programs write, counters, scratch)
    links-<build>/<program>  links of the enforcement programs of one object build
                             (<build> = first 12 hex digits of the object's sha256):
                             the scope bookkeeping always, each hook kind's only while
                             a policy needs it (:class:`Hooks`); at stop only kinds an
                             enforcing policy needs stay

What changes it, and when:

1. first start (nothing pinned): after load and attach, :meth:`Pins.commit` pins every map
   and the enforcement links.
2. restart, same build: :meth:`Pins.adopt` opens the pinned maps; :meth:`Pins.prepare`
   makes the new object reuse them and *not load* the pinned programs that are not
   switched on demand (the scope bookkeeping): the kernel keeps running the pinned ones
   against the same maps, no gap. The on-demand ones (every hook kind) are loaded again;
   the first publication attaches this agent's for the kinds its policies need before it
   drops the earlier pins (:class:`OnDemandLink`), and drops the pins of the others.
3. restart, new build: compatible maps are reused, the new enforcement programs attach
   beside the old ones (both enforce the same maps), and :meth:`Pins.retire` removes the
   old build's links once policies are applied. If a map's definition changed, nothing is
   reused: old programs keep enforcing from the old maps until ``retire`` (after the new
   maps were filled), then the old maps are unpinned.
4. ``moray-agent unload`` (:func:`unload`): tasks held at their first exec are continued
   and everything under the root is removed; the kernel frees programs and maps when the
   last reference (a pin, or a running agent's fd) goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moray.agent.bpf import libbpf
from moray.agent.bpf.loader import BpfMap, BpfObject, Link

log = logging.getLogger(__name__)

PIN_ROOT = "/sys/fs/bpf/moray"


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("rest", ctypes.c_char * 128)]


def map_info(fd: int) -> tuple[int, int, int, int]:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    libbpf.check_int(libbpf.lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info),
                                                         ctypes.byref(size)), "map info")
    return info.type, info.key_size, info.value_size, info.max_entries


def map_id(fd: int) -> int:
    """The kernel's id of a map (unique while the map exists)."""
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    libbpf.check_int(libbpf.lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info),
                                                         ctypes.byref(size)), "map info")
    return int(info.id)


def build_id(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def _is_internal(name: str) -> bool:
    return "." in name  # .rodata, .bss, .data, .kconfig: per object, never shared


def pinned_map(name: str, root: str = PIN_ROOT) -> BpfMap | None:
    """A pinned map opened by path (for CLI commands that run beside the agent)."""
    path = os.path.join(root, "maps", name)
    if not os.path.exists(path):
        return None
    fd = libbpf.check_int(libbpf.lib().bpf_obj_get(path.encode()), f"open {path}")
    t, ks, vs, n = map_info(fd)
    return BpfMap(name, fd, ks, vs, t, n)


@dataclass
class Pins:
    root: str = PIN_ROOT
    build: str = ""
    map_fds: dict[str, int] = field(default_factory=dict)
    kept_links: set[str] = field(default_factory=set)
    old_link_dirs: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    stale_maps: bool = False   # the pinned maps could not be reused (definition changed)

    @property
    def links_dir(self) -> str:
        """Where this build's enforcement links are pinned."""
        return os.path.join(self.root, f"links-{self.build}")

    @property
    def adopted(self) -> bool:
        return bool(self.map_fds)

    def adopt(self, build: str) -> None:
        """Open what a previous agent pinned."""
        self.build = build
        maps_dir = os.path.join(self.root, "maps")
        if os.path.isdir(maps_dir):
            for name in sorted(os.listdir(maps_dir)):
                path = os.path.join(maps_dir, name)
                fd = libbpf.lib().bpf_obj_get(path.encode())
                if fd < 0:
                    log.warning("cannot open pinned map %s: %s", path, os.strerror(-fd))
                    continue
                self.map_fds[name] = fd
        if not os.path.isdir(self.root):
            return
        for entry in sorted(os.listdir(self.root)):
            if not entry.startswith("links-"):
                continue
            d = os.path.join(self.root, entry)
            if entry == f"links-{build}":
                self.kept_links = set(os.listdir(d))
            else:
                self.old_link_dirs.append(d)
        if self.map_fds:
            log.info("adopting pinned BPF state", extra={
                "maps": len(self.map_fds), "links_kept": len(self.kept_links),
                "old_builds": len(self.old_link_dirs)})

    def prepare(self, obj: BpfObject, on_demand: Iterable[str] = ()) -> None:
        """Before load: reuse pinned maps (all or none) and skip pinned enforcement
        programs of this build (except `on_demand` ones: OnDemandLink attaches this
        agent's own and replaces the pin)."""
        names = [n for n in obj.map_names() if not _is_internal(n)]
        compatible = True
        for n in names:
            fd = self.map_fds.get(n)
            if fd is None:
                continue
            want, have = obj.map_def(n), map_info(fd)
            # the ring buffer may have another size: reuse it as it is
            if want[:3] != have[:3] or (want[3] != have[3] and n != "mr_events"):
                log.warning("pinned map %s differs (%s vs %s): not reusing pinned maps",
                            n, have, want)
                compatible = False
        if not compatible:
            self.stale_maps = True
            self.kept_links = set()
            return
        for n in names:
            fd = self.map_fds.get(n)
            if fd is not None:
                obj.reuse_map(n, fd)
                self.reused.append(n)
        if self.kept_links:
            obj.disable(self.kept_links - set(on_demand))

    def commit(self, obj: BpfObject, enforcement: set[str]) -> None:
        """After attach: pin maps that are not pinned yet and this build's new links."""
        maps_dir = os.path.join(self.root, "maps")
        if self.stale_maps:
            maps_dir = os.path.join(self.root, f"maps-{self.build}.new")
        os.makedirs(maps_dir, exist_ok=True)
        for n in obj.map_names():
            if _is_internal(n) or n in self.reused:
                continue
            path = os.path.join(maps_dir, n)
            if not os.path.exists(path):
                obj.map(n).pin(path)
        links_dir = self.links_dir
        os.makedirs(links_dir, exist_ok=True)
        for link in obj.links:
            if link.program in enforcement and not link.pinned:
                path = os.path.join(links_dir, link.program)
                if os.path.exists(path):
                    os.unlink(path)
                libbpf.check_int(libbpf.lib().bpf_link__pin(link.ptr, path.encode()),
                                 f"pin link {link.program}")
                link.pinned = path

    def retire(self) -> None:
        """After policies are in the new maps: drop what older builds pinned."""
        for d in self.old_link_dirs:
            shutil.rmtree(d, ignore_errors=True)
            log.info("old enforcement links removed", extra={"dir": d})
        self.old_link_dirs.clear()
        if self.stale_maps:
            old = os.path.join(self.root, "maps")
            new = os.path.join(self.root, f"maps-{self.build}.new")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(new, old)
            self.stale_maps = False

    def close(self) -> None:
        for fd in self.map_fds.values():
            os.close(fd)
        self.map_fds.clear()


class OnDemandLink:
    """One loaded program attached only while something needs it (mr_enf_sys: a program
    on every syscall of the host costs every task, rule or not), its link pinned like the
    other enforcement links so that enforcement outlives the agent.

    `set(True)` attaches it (and pins the link, replacing a previous agent's pin of it:
    attached first, so there is no gap); `set(False)` removes the pin, ours or adopted, and
    destroys our link. The policy applier calls it around its publishing flip
    (agent/policy/apply.py): on before rules that need it go live, off after the last
    such rule went."""

    def __init__(self, obj: BpfObject, program: str, pin_dir: str | None,
                 cgroup_path: str | None = None) -> None:
        self.obj = obj
        self.program = program
        self.pin_path = os.path.join(pin_dir, program) if pin_dir else None
        self.cgroup_path = cgroup_path
        self.link: Link | None = None

    @property
    def attached(self) -> bool:
        return self.link is not None or bool(self.pin_path and os.path.exists(self.pin_path))

    def set(self, on: bool) -> None:
        if on and self.link is None:
            link = self.obj.attach(self.program, self.cgroup_path)
            if self.pin_path:
                os.makedirs(os.path.dirname(self.pin_path), exist_ok=True)
                if os.path.exists(self.pin_path):
                    os.unlink(self.pin_path)  # a previous agent's link: ours runs already
                libbpf.check_int(libbpf.lib().bpf_link__pin(link.ptr,
                                                            self.pin_path.encode()),
                                 f"pin link {self.program}")
                link.pinned = self.pin_path
            self.link = link
            log.info("on-demand program attached", extra={"program": self.program})
        elif not on and self.attached:
            if self.pin_path and os.path.exists(self.pin_path):
                os.unlink(self.pin_path)
            if self.link is not None:
                self.obj.detach(self.link)
                self.link = None
            log.info("on-demand program detached", extra={"program": self.program})


class Hooks:
    """The enforcement programs by hook kind (agent/policy/programs.py KINDS), each kind
    attached as a whole only while a live rule needs it (issue 18: with no policy, no
    enforcement program runs).

    What changes it: the policy applier's publishing flip (agent/policy/apply.py
    `_switch`): :meth:`set` (kind, True) before the flip that makes a rule of that kind
    live, (kind, False) after the flip that removed the last one; the first publication
    after a start also removes links an earlier agent pinned for kinds nothing needs now.
    At stop (:meth:`release`), kinds no enforcing policy needs are detached and unpinned,
    so nothing of them stays on the syscall path; the others stay pinned and enforce while
    the agent is down. Only programs this kernel loaded are switched (the other tier's are
    not in the object)."""

    def __init__(self, obj: BpfObject, kinds: Mapping[str, Iterable[str]],
                 pin_dir: str | None, cgroup_path: str | None = None) -> None:
        self.links = {k: [OnDemandLink(obj, p, pin_dir, cgroup_path)
                          for p in progs if obj.can_attach(p)]
                      for k, progs in kinds.items()}

    def set(self, kind: str, on: bool) -> None:
        for link in self.links.get(kind, ()):
            link.set(on)

    def attached(self) -> dict[str, list[str]]:
        """Kind -> its programs attached now (by this agent or pinned by an earlier one)."""
        out = {}
        for kind, links in self.links.items():
            on = [ln.program for ln in links if ln.attached]
            if on:
                out[kind] = on
        return out

    def release(self, keep: Mapping[str, bool]) -> list[str]:
        """At stop: detach and unpin every kind *keep* does not name as needed; returns
        the kinds left attached (pinned)."""
        for kind in self.links:
            if not keep.get(kind, False):
                self.set(kind, False)
        return sorted(self.attached())


_HOLD = struct.Struct("<I")


def release_held(root: str = PIN_ROOT) -> int:
    """SIGCONT every task still held at its first exec (nobody will decide on it)."""
    m = pinned_map("mr_phold", root)
    if m is None:
        return 0
    n = 0
    try:
        for key in list(m.keys()):
            pid = _HOLD.unpack(key)[0]
            try:
                os.kill(pid, signal.SIGCONT)
                n += 1
            except ProcessLookupError:
                pass
            m.delete(key)
    finally:
        os.close(m.fd)
    return n


def unload(root: str = PIN_ROOT) -> list[str]:
    """Remove every pin under *root*; returns what was removed."""
    if not os.path.isdir(root):
        return []
    released = release_held(root)
    if released:
        log.info("released %d held tasks", released)
    removed = []
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            p = os.path.join(dirpath, f)
            os.unlink(p)
            removed.append(p)
        for d in dirnames:
            os.rmdir(os.path.join(dirpath, d))
    os.rmdir(root)
    from moray.agent.policy.guard import journal_path  # its guard exits by itself
    from moray.agent.policy.slots import default_path  # the names of its slots go too

    for state in (default_path(root), journal_path(root)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state)
            removed.append(state)
    return removed
