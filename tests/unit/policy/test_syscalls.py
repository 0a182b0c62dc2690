"""The x86_64 syscall table policies name syscalls from (api/policy/syscalls.py): complete,
one number per name, within the kernel's table (MR_SYS_MAX), and right where this kernel
can show it."""

from __future__ import annotations

import ctypes
import os
import platform
import stat
from pathlib import Path

import pytest

from moray.api.policy.syscalls import X86_64

MR_SYS_MAX = 512  # bpf/maps/policy.h


def test_numbers_are_unique_and_fit_the_kernel_table() -> None:
    assert len(set(X86_64.values())) == len(X86_64)
    assert all(0 <= nr < MR_SYS_MAX for nr in X86_64.values())


def test_the_table_has_no_gap_and_names_the_newer_syscalls() -> None:
    # 0-335 and 424-469 are every x86_64 number Linux 6.18 has (336-423 are unused on
    # x86_64: the 32-bit time64 calls live there on other architectures)
    assert set(X86_64.values()) == set(range(336)) | set(range(424, 470))
    for name in ("fchmodat2", "clone3", "execveat", "openat2", "io_uring_setup",
                 "mseal", "setxattrat", "file_setattr"):
        assert name in X86_64


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 numbers")
def test_fchmodat2_is_the_kernels(tmp_path: Path) -> None:
    """Where the kernel has fchmodat2 (6.6+), calling the table's number changes a mode."""
    f = tmp_path / "f"
    f.write_text("")
    os.chmod(f, 0o600)
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    rc = libc.syscall(X86_64["fchmodat2"], at_fdcwd, str(f).encode(), 0o640, 0)
    if rc != 0 and ctypes.get_errno() == 38:  # ENOSYS: a kernel before 6.6
        pytest.skip("this kernel has no fchmodat2")
    assert rc == 0
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
