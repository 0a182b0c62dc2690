"""ctypes declarations for the parts of libbpf.so.1 moray uses.

This module and loader.py / btf.py are the only code that calls into libbpf. It declares
signatures once, routes libbpf's own log lines into Python logging (level mapped, with a
capture hook the loader uses to attach the verifier log to load errors), and translates
libbpf's "NULL + errno" / "-errno" conventions into OSError at the call site.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from moray.errors import KernelError

log = logging.getLogger(__name__)

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")

# enum libbpf_print_level
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
# BTF kinds (linux/btf.h)
BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_ARRAY, BTF_KIND_STRUCT = 1, 2, 3, 4
BTF_KIND_UNION, BTF_KIND_ENUM, BTF_KIND_TYPEDEF = 5, 6, 8
BTF_KIND_FUNC, BTF_KIND_VAR, BTF_KIND_DATASEC = 12, 14, 15
# map update flags
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2


class TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf bpf.h): running a syscall program."""

    _fields_ = (("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32))


class BtfType(ctypes.Structure):
    """struct btf_type; for STRUCT/UNION/DATASEC the members follow it in memory."""

    _fields_ = (("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32),
                ("size_or_type", ctypes.c_uint32))


class BtfMember(ctypes.Structure):
    _fields_ = (("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32),
                ("offset", ctypes.c_uint32))


class BtfVarSecinfo(ctypes.Structure):
    _fields_ = (("type", ctypes.c_uint32), ("offset", ctypes.c_uint32),
                ("size", ctypes.c_uint32))


class BtfArray(ctypes.Structure):
    _fields_ = (("type", ctypes.c_uint32), ("index_type", ctypes.c_uint32),
                ("nelems", ctypes.c_uint32))


PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_P = ctypes.c_void_p
_S = ctypes.c_char_p
_I = ctypes.c_int
_U32 = ctypes.c_uint32
_SZ = ctypes.c_size_t

# name: (restype, argtypes)
_SIGNATURES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "libbpf_set_print": (_P, (PRINT_FN,)),
    "libbpf_num_possible_cpus": (_I, ()),
    "libbpf_probe_bpf_prog_type": (_I, (_I, _P)),
    "bpf_object__open_file": (_P, (_S, _P)),
    "bpf_object__load": (_I, (_P,)),
    "bpf_object__close": (None, (_P,)),
    "bpf_object__btf": (_P, (_P,)),
    "bpf_object__next_program": (_P, (_P, _P)),
    "bpf_object__next_map": (_P, (_P, _P)),
    "bpf_object__find_program_by_name": (_P, (_P, _S)),
    "bpf_object__find_map_by_name": (_P, (_P, _S)),
    "bpf_program__name": (_S, (_P,)),
    "bpf_program__section_name": (_S, (_P,)),
    "bpf_program__set_autoload": (_I, (_P, ctypes.c_bool)),
    "bpf_program__autoload": (ctypes.c_bool, (_P,)),
    "bpf_program__fd": (_I, (_P,)),
    "bpf_program__set_log_level": (_I, (_P, _U32)),
    "bpf_program__set_log_buf": (_I, (_P, _P, _SZ)),
    "bpf_program__attach": (_P, (_P,)),
    "bpf_program__attach_cgroup": (_P, (_P, _I)),
    "bpf_program__attach_tracepoint": (_P, (_P, _S, _S)),
    "bpf_program__insns": (_P, (_P,)),
    "bpf_program__insn_cnt": (_SZ, (_P,)),
    "bpf_program__pin": (_I, (_P, _S)),
    "bpf_link__pin": (_I, (_P, _S)),
    "bpf_link__unpin": (_I, (_P,)),
    "bpf_link__destroy": (_I, (_P,)),
    "bpf_link__disconnect": (None, (_P,)),
    "bpf_link__open": (_P, (_S,)),
    "bpf_map__name": (_S, (_P,)),
    "bpf_map__fd": (_I, (_P,)),
    "bpf_map__type": (_I, (_P,)),
    "bpf_map__key_size": (_U32, (_P,)),
    "bpf_map__value_size": (_U32, (_P,)),
    "bpf_map__max_entries": (_U32, (_P,)),
    "bpf_map__set_max_entries": (_I, (_P, _U32)),
    "bpf_map__initial_value": (_P, (_P, ctypes.POINTER(_SZ))),
    "bpf_map__pin": (_I, (_P, _S)),
    "bpf_map__unpin": (_I, (_P, _S)),
    "bpf_map__set_pin_path": (_I, (_P, _S)),
    "bpf_map__reuse_fd": (_I, (_P, _I)),
    "bpf_map_update_elem": (_I, (_I, _P, _P, ctypes.c_uint64)),
    "bpf_map_lookup_elem": (_I, (_I, _P, _P)),
    "bpf_map_delete_elem": (_I, (_I, _P)),
    "bpf_map_get_next_key": (_I, (_I, _P, _P)),
    "bpf_prog_test_run_opts": (_I, (_I, _P)),
    "bpf_obj_get": (_I, (_S,)),
    "bpf_obj_pin": (_I, (_I, _S)),
    "bpf_obj_get_info_by_fd": (_I, (_I, _P, ctypes.POINTER(_U32))),
    "btf__parse": (_P, (_S, _P)),
    "btf__free": (None, (_P,)),
    "btf__find_by_name_kind": (_I, (_P, _S, _U32)),
    "btf__type_by_id": (ctypes.POINTER(BtfType), (_P, _U32)),
    "btf__name_by_offset": (_S, (_P, _U32)),
    "btf__resolve_size": (ctypes.c_long, (_P, _U32)),
    "btf__resolve_type": (_I, (_P, _U32)),
    "btf__type_cnt": (_U32, (_P,)),
}


class LibbpfMissingError(KernelError, OSError):
    """libbpf.so.1 is not installed (Debian: apt-get install libbpf1)."""


def _load() -> ctypes.CDLL:
    errors: list[str] = []
    for name in (*LIBBPF_NAMES, ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as err:
            errors.append(str(err))
            continue
        for fn, (res, args) in _SIGNATURES.items():
            f = getattr(lib, fn)
            f.restype = res
            f.argtypes = args
        return lib
    raise LibbpfMissingError(
        "libbpf.so.1 not found (install Debian's libbpf1): " + "; ".join(errors))


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def lib() -> ctypes.CDLL:
    """The loaded library, with signatures declared and its log routed to logging."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _load()
            _lib.libbpf_set_print(_print_cb)
        return _lib


# --- libbpf's log -> logging, with a capture for the loader -------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.restype = ctypes.c_int
_libc.vsnprintf.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p)
_LEVELS = {LIBBPF_WARN: logging.WARNING, LIBBPF_INFO: logging.INFO, LIBBPF_DEBUG: logging.DEBUG}
_capture = threading.local()
_libbpf_log = logging.getLogger("libbpf")


def _print(level: int, fmt: bytes, va_list: int | None) -> int:
    # the verifier's log arrives as one warning: room for all of it (its reason is at the
    # end); debug lines are short and many
    buf = ctypes.create_string_buffer(1 << 20 if level == LIBBPF_WARN else 8192)
    _libc.vsnprintf(buf, len(buf), fmt, va_list)
    text = buf.value.decode("utf-8", "replace").rstrip("\n")
    lines: list[str] | None = getattr(_capture, "lines", None)
    if lines is not None:
        lines.append(text)
        if level != LIBBPF_WARN:
            return 0
    if level == LIBBPF_DEBUG and not _libbpf_log.isEnabledFor(logging.DEBUG):
        return 0
    _libbpf_log.log(_LEVELS.get(level, logging.DEBUG), "%s", text)
    return 0


_print_cb = PRINT_FN(_print)


class LogCapture:
    """Collects libbpf's log lines on this thread while active (used around load)."""

    def __enter__(self) -> list[str]:
        self.lines: list[str] = []
        _capture.lines = self.lines
        return self.lines

    def __exit__(self, *exc: object) -> None:
        _capture.lines = None


def check_ptr(ptr: int | None, what: str) -> int:
    """libbpf 1.x returns NULL and sets errno on failure."""
    if not ptr:
        err = ctypes.get_errno() or 22
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ptr


def check_int(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno on failure."""
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def num_possible_cpus() -> int:
    return int(check_int(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus"))


def call(fn: str, *args: Any) -> Any:
    """Call a declared libbpf function by name (for the few one-off calls)."""
    f: Callable[..., Any] = getattr(lib(), fn)
    return f(*args)
