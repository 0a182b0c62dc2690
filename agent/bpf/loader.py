"""Open, configure, load, attach and pin a BPF object; typed access to its maps.

Owns the libbpf object handle and every link it creates. Lifecycle:

    obj = BpfObject.open(path)                  # parse ELF; nothing in the kernel yet
    obj.set_rodata({"cfg_self_tgid": pid})      # const volatile settings, before load
    obj.set_max_entries("mr_events", 1 << 24)
    obj.disable(["mr_exit_accept"])             # programs this kernel cannot take
    obj.share([("mr_exit_openat", "mr_exit_open")])  # one verified copy, two tracepoints
    obj.load()                                  # verifier; BpfLoadError carries its log
    obj.attach_all(cgroup_path)                 # tracepoints auto, cgroup hooks on the v2 root
    obj.map("mr_watch").update(key, value)
    obj.close()                                 # links destroyed, unless pinned

A load failure names the program and carries the verifier's log (collected from libbpf's
print callback); everything else libbpf logs goes to the "libbpf" logger.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moray.agent.bpf import libbpf
from moray.agent.bpf.btf import Btf
from moray.errors import KernelError

log = logging.getLogger(__name__)

OBJECT_DIR = Path(__file__).parent / "objects"
BPFFS = "/sys/fs/bpf"

BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY = 5, 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
_PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                 BPF_MAP_TYPE_LRU_PERCPU_HASH}


class BpfError(KernelError):
    """Base of errors raised by the BPF layer."""


class BpfLoadError(BpfError):
    """The kernel refused a program; `program` names it, `log` is the verifier's log."""

    def __init__(self, program: str | None, errno: int, log_lines: list[str]) -> None:
        self.program = program
        self.errno = errno
        self.log = "\n".join(log_lines)
        what = f"program {program!r}" if program else "BPF object"
        tail = "\n".join(log_lines[-25:])
        super().__init__(f"kernel refused {what}: {os.strerror(errno)} (errno {errno})\n{tail}")


class BpfAttachError(BpfError):
    def __init__(self, program: str, section: str, err: OSError) -> None:
        self.program = program
        self.section = section
        super().__init__(f"cannot attach {program!r} ({section}): {err.strerror}")


def object_path(name: str) -> Path:
    """Path of a shipped object (built by `make -C bpf` into agent/bpf/objects/)."""
    p = OBJECT_DIR / name
    if not p.exists():
        raise FileNotFoundError(
            f"{p} is missing: build the BPF objects with `make -C bpf` (needs clang, bpftool)")
    return p


class BpfMap:
    """One map, addressed by fd. Keys and values are bytes of the map's own sizes."""

    def __init__(self, name: str, fd: int, key_size: int, value_size: int, map_type: int,
                 max_entries: int) -> None:
        self.name = name
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size
        self.type = map_type
        self.max_entries = max_entries
        self.percpu = map_type in _PERCPU_TYPES
        self._lib = libbpf.lib()
        if self.percpu:
            self.ncpu = libbpf.num_possible_cpus()
            self._vsize = ((value_size + 7) // 8 * 8) * self.ncpu
        else:
            self.ncpu = 1
            self._vsize = value_size

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise ValueError(f"{self.name}: key is {len(key)} bytes, map wants {self.key_size}")
        return ctypes.create_string_buffer(key, self.key_size)

    def update(self, key: bytes, value: bytes, flags: int = libbpf.BPF_ANY) -> None:
        if len(value) != self._vsize:
            raise ValueError(f"{self.name}: value is {len(value)} bytes, wants {self._vsize}")
        k = self._key(key)
        v = ctypes.create_string_buffer(value, self._vsize)
        libbpf.check_int(self._lib.bpf_map_update_elem(self.fd, k, v, flags),
                         f"update {self.name}")

    def lookup(self, key: bytes) -> bytes | None:
        k = self._key(key)
        v = ctypes.create_string_buffer(self._vsize)
        ret = self._lib.bpf_map_lookup_elem(self.fd, k, v)
        if ret == -2:  # ENOENT
            return None
        libbpf.check_int(ret, f"lookup {self.name}")
        return v.raw

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        """Per-CPU maps: one value per possible CPU."""
        raw = self.lookup(key)
        if raw is None:
            return []
        step = (self.value_size + 7) // 8 * 8
        return [raw[i * step:i * step + self.value_size] for i in range(self.ncpu)]

    def delete(self, key: bytes) -> bool:
        ret = self._lib.bpf_map_delete_elem(self.fd, self._key(key))
        if ret == -2:
            return False
        libbpf.check_int(ret, f"delete {self.name}")
        return True

    def keys(self) -> Iterator[bytes]:
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = self._lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if ret == -2:
                return
            libbpf.check_int(ret, f"iterate {self.name}")
            yield nxt.raw
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def pin(self, path: str) -> None:
        libbpf.check_int(self._lib.bpf_obj_pin(self.fd, path.encode()), f"pin {self.name}")


BPF_LOG_STATS = 4   # the verifier's log level: statistics only
_STATS_LOG = 1 << 16


@dataclass(frozen=True, slots=True)
class VerifierStats:
    """What the verifier said about one program (BPF_LOG_STATS): instructions it
    processed (the 1M limit) and its own time."""

    program: str
    insns: int
    verify_us: int

    @classmethod
    def parse(cls, program: str, text: str) -> VerifierStats:
        t = re.search(r"verification time (\d+) usec", text)
        n = re.search(r"processed (\d+) insns", text)
        return cls(program, int(n.group(1)) if n else -1, int(t.group(1)) if t else -1)


@dataclass
class Link:
    program: str
    section: str
    ptr: int
    pinned: str | None = None


@dataclass
class BpfObject:
    path: Path
    _ptr: int
    _btf: Btf
    links: list[Link] = field(default_factory=list)
    loaded: bool = False
    verified: dict[str, VerifierStats] = field(default_factory=dict)  # load(profile=True)
    # program -> the loaded program that runs in its place (share())
    shared: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> BpfObject:
        lib = libbpf.lib()
        p = Path(path)
        ptr = libbpf.check_ptr(lib.bpf_object__open_file(str(p).encode(), None),
                               f"open {p}")
        return cls(p, ptr, Btf(str(p)))

    # --- before load ------------------------------------------------------------------

    def programs(self) -> Iterator[tuple[str, str, int]]:
        """(name, section, handle) of every program in the object."""
        lib = libbpf.lib()
        prog = lib.bpf_object__next_program(self._ptr, None)
        while prog:
            yield (lib.bpf_program__name(prog).decode(),
                   lib.bpf_program__section_name(prog).decode(), prog)
            prog = lib.bpf_object__next_program(self._ptr, prog)

    def _maps(self) -> Iterator[tuple[str, int]]:
        lib = libbpf.lib()
        m = lib.bpf_object__next_map(self._ptr, None)
        while m:
            yield lib.bpf_map__name(m).decode(), m
            m = lib.bpf_object__next_map(self._ptr, m)

    def _map_ptr(self, name: str) -> int:
        for n, m in self._maps():
            if n == name:
                return m
        raise KeyError(f"no map {name!r} in {self.path}")

    def disable(self, names: Iterable[str]) -> None:
        """Do not load these programs (the kernel lacks their hook)."""
        wanted = set(names)
        for name, _sec, prog in self.programs():
            if name in wanted:
                libbpf.lib().bpf_program__set_autoload(prog, False)

    def share(self, groups: Iterable[Iterable[str]]) -> None:
        """Before load: the programs of a group are the same code on tracepoints with the
        same context (one C body under several syscalls/sys_exit_* sections): only the
        first of them still set to load is verified and loaded, and it is attached at
        every member's tracepoint (attach_all, attach). The verifier's time is per loaded
        program, so a group costs one program's (the four file-open exits are ~0.9M
        instructions and ~1.1 s each on this project's machines)."""
        lib = libbpf.lib()
        progs = {n: (sec, p) for n, sec, p in self.programs()}
        for group in groups:
            members = [n for n in group if n in progs]
            for n in members:
                if not progs[n][0].startswith("tracepoint/"):
                    raise ValueError(f"{n}: only tracepoint programs can share code")
            wanted = [n for n in members if lib.bpf_program__autoload(progs[n][1])]
            for n in wanted[1:]:
                lib.bpf_program__set_autoload(progs[n][1], False)
                self.shared[n] = wanted[0]

    def insns(self, name: str) -> bytes:
        """The program's instructions as compiled (before relocation)."""
        for n, _sec, prog in self.programs():
            if n == name:
                lib = libbpf.lib()
                return ctypes.string_at(lib.bpf_program__insns(prog),
                                        8 * lib.bpf_program__insn_cnt(prog))
        raise KeyError(f"no program {name!r} in {self.path}")

    def only(self, names: Iterable[str]) -> None:
        """Load only these programs."""
        wanted = set(names)
        for name, _sec, prog in self.programs():
            libbpf.lib().bpf_program__set_autoload(prog, name in wanted)

    def map_def(self, map_name: str) -> tuple[int, int, int, int]:
        """(type, key size, value size, max entries) as the object will create the map."""
        lib = libbpf.lib()
        m = self._map_ptr(map_name)
        return (lib.bpf_map__type(m), lib.bpf_map__key_size(m), lib.bpf_map__value_size(m),
                lib.bpf_map__max_entries(m))

    def map_names(self) -> list[str]:
        return [n for n, _ in self._maps()]

    def reuse_map(self, map_name: str, fd: int) -> None:
        """Before load: use an existing (pinned) map instead of creating one."""
        libbpf.check_int(libbpf.lib().bpf_map__reuse_fd(self._map_ptr(map_name), fd),
                         f"reuse map {map_name}")

    def set_max_entries(self, map_name: str, n: int) -> None:
        libbpf.check_int(libbpf.lib().bpf_map__set_max_entries(self._map_ptr(map_name), n),
                         f"resize {map_name}")

    def set_rodata(self, values: dict[str, int]) -> None:
        """Write `const volatile` integer settings before load."""
        if not values:
            return
        rodata = next((m for n, m in self._maps() if n.endswith(".rodata")), None)
        if rodata is None:
            raise KeyError(f"{self.path} has no .rodata")
        layout = self._btf.datasec_vars(".rodata")
        size = ctypes.c_size_t()
        base = libbpf.check_ptr(libbpf.lib().bpf_map__initial_value(rodata, ctypes.byref(size)),
                                "rodata initial value")
        for name, value in values.items():
            if name not in layout:
                raise KeyError(f"no setting {name!r} in {self.path} (.rodata: {sorted(layout)})")
            off, sz = layout[name]
            if off + sz > size.value:
                raise ValueError(f"setting {name!r} outside .rodata")
            ctypes.memmove(base + off, int(value).to_bytes(sz, "little", signed=value < 0), sz)

    # --- load -------------------------------------------------------------------------

    def load(self, profile: bool = False) -> None:
        """Verify and load every autoload program (one bpf_object__load). *profile*: ask
        the verifier for its statistics (BPF_LOG_STATS) per program, into `verified`."""
        lib = libbpf.lib()
        bufs: dict[str, ctypes.Array[ctypes.c_char]] = {}
        if profile:
            for name, _sec, handle in self.programs():
                if lib.bpf_program__autoload(handle):
                    bufs[name] = ctypes.create_string_buffer(_STATS_LOG)
                    lib.bpf_program__set_log_buf(handle, bufs[name], _STATS_LOG)
                    lib.bpf_program__set_log_level(handle, BPF_LOG_STATS)
        with libbpf.LogCapture() as lines:
            ret = lib.bpf_object__load(self._ptr)
        for name, buf in bufs.items():
            self.verified[name] = VerifierStats.parse(name, buf.value.decode("utf-8", "replace"))
        if ret < 0:
            prog = None
            for line in lines:
                m = re.search(r"prog '([^']+)': (?:BPF program load failed|failed to load)", line)
                if m:
                    prog = m.group(1)
                    break
            raise BpfLoadError(prog, -ret, lines)
        self.loaded = True

    # --- after load -------------------------------------------------------------------

    def map(self, name: str) -> BpfMap:
        lib = libbpf.lib()
        m = self._map_ptr(name)
        return BpfMap(name, lib.bpf_map__fd(m), lib.bpf_map__key_size(m),
                      lib.bpf_map__value_size(m), lib.bpf_map__type(m),
                      lib.bpf_map__max_entries(m))

    def attachable(self) -> Iterator[tuple[str, str, int]]:
        """(name, section, handle of the loaded program that runs there) of every program
        that can be attached: the loaded ones and those sharing a loaded one's code."""
        lib = libbpf.lib()
        progs = {n: p for n, _sec, p in self.programs()}
        for name, sec, prog in self.programs():
            if sec == "syscall":  # run by the agent (run()), never attached
                continue
            if name in self.shared:
                yield name, sec, progs[self.shared[name]]
            elif lib.bpf_program__autoload(prog):
                yield name, sec, prog

    def run(self, name: str, ctx: bytes = b"") -> int:
        """Run the loaded syscall program `name` once (BPF_PROG_TEST_RUN) with `ctx` as
        its context; its return value."""
        lib = libbpf.lib()
        prog = lib.bpf_object__find_program_by_name(self._ptr, name.encode())
        if not prog:
            raise KeyError(f"no program {name!r} in {self.path}")
        buf = ctypes.create_string_buffer(ctx, max(len(ctx), 1))
        opts = libbpf.TestRunOpts(sz=ctypes.sizeof(libbpf.TestRunOpts))
        if ctx:
            opts.ctx_in = ctypes.cast(buf, ctypes.c_void_p)
            opts.ctx_size_in = len(ctx)
        libbpf.check_int(lib.bpf_prog_test_run_opts(lib.bpf_program__fd(prog),
                                                     ctypes.byref(opts)), f"run {name}")
        return int(opts.retval)

    def _attach(self, name: str, sec: str, prog: int, cg_fd: int) -> Link:
        lib = libbpf.lib()
        try:
            if sec.startswith("cgroup/"):
                if cg_fd < 0:
                    raise OSError(22, "no cgroup v2 mount to attach to")
                ptr = libbpf.check_ptr(lib.bpf_program__attach_cgroup(prog, cg_fd), name)
            elif name in self.shared:  # the loaded program's own section is another one
                _, category, tp = sec.split("/", 2)
                ptr = libbpf.check_ptr(lib.bpf_program__attach_tracepoint(
                    prog, category.encode(), tp.encode()), name)
            else:
                ptr = libbpf.check_ptr(lib.bpf_program__attach(prog), name)
        except OSError as err:
            raise BpfAttachError(name, sec, err) from err
        link = Link(name, sec, ptr)
        self.links.append(link)
        log.debug("attached", extra={"program": name, "section": sec})
        return link

    def attach_all(self, cgroup_path: str | None, skip: Iterable[str] = ()) -> list[Link]:
        """Attach every loaded program: by section name, cgroup hooks to cgroup_path.
        Programs named in `skip` stay loaded but unattached (see attach())."""
        skipped = set(skip)
        with _cgroup_fd(cgroup_path) as cg_fd:
            for name, sec, prog in self.attachable():
                if name not in skipped:
                    self._attach(name, sec, prog, cg_fd)
        return self.links

    def attach(self, name: str, cgroup_path: str | None = None) -> Link:
        """Attach one program attach_all skipped (cgroup hooks to cgroup_path); the link is
        kept in `links` until detach()."""
        for n, sec, prog in self.attachable():
            if n == name:
                with _cgroup_fd(cgroup_path if sec.startswith("cgroup/") else None) as cg_fd:
                    return self._attach(n, sec, prog, cg_fd)
        raise KeyError(f"no loaded program {name!r} in {self.path}")

    def can_attach(self, name: str) -> bool:
        return any(n == name for n, _s, _p in self.attachable())

    def detach(self, link: Link) -> None:
        """Destroy a link attach() made (its pin, if any, is the caller's to remove)."""
        self.links.remove(link)
        libbpf.lib().bpf_link__destroy(link.ptr)

    def pin_links(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        for link in self.links:
            path = os.path.join(directory, link.program)
            libbpf.check_int(libbpf.lib().bpf_link__pin(link.ptr, path.encode()),
                             f"pin link {link.program}")
            link.pinned = path

    def close(self) -> None:
        """Destroy links (pinned ones stay in the kernel) and free the object."""
        lib = libbpf.lib()
        for link in self.links:
            if link.pinned:
                lib.bpf_link__disconnect(link.ptr)
            lib.bpf_link__destroy(link.ptr)
        self.links.clear()
        if self._ptr:
            lib.bpf_object__close(self._ptr)
            self._ptr = 0
        self._btf.close()


@contextlib.contextmanager
def _cgroup_fd(path: str | None) -> Iterator[int]:
    """An fd of the cgroup v2 directory programs attach to (-1 without one)."""
    if path is None:
        yield -1
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


TRACEFS = "/sys/kernel/tracing"


def ensure_mount(path: str, fstype: str) -> bool:
    """Mount fstype (bpf, tracefs, securityfs) at path unless it is mounted there already;
    returns whether it is mounted now."""
    if _is_mount_of(path, fstype):
        return True
    try:
        os.makedirs(path, exist_ok=True)
        _mount(fstype, path, fstype)
    except OSError as err:
        log.warning("cannot mount %s at %s: %s", fstype, path, err.strerror)
        return False
    return True


def ensure_bpffs(path: str = BPFFS) -> bool:
    return ensure_mount(path, "bpf")


def ensure_tracefs(path: str = TRACEFS) -> bool:
    """libbpf finds tracepoint ids under tracefs: without it, tracepoints cannot attach."""
    return ensure_mount(path, "tracefs")


def _is_mount_of(path: str, fstype: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if left.split()[4] == path and right.split()[0] == fstype:
                    return True
    except OSError:
        return False
    return False


def _mount(source: str, target: str, fstype: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)
