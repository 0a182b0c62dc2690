"""rename(OLD, NEW) through io_uring (IORING_OP_RENAMEAT), with raw syscalls from Python:
no liburing, no compiler (the kernel matrix's guests have neither). Prints 0 or -errno;
exit status 77 when io_uring is unavailable. Used by tests/integration/test_agent_paths.py:
a rename that no syscall tracepoint sees.

    python tests/helpers/uring_rename.py OLD NEW
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys

SETUP, ENTER = 425, 426                      # x86_64 syscall numbers
OFF_SQ_RING, OFF_CQ_RING, OFF_SQES = 0, 0x8000000, 0x10000000
OP_RENAMEAT, AT_FDCWD, ENTER_GETEVENTS = 35, -100, 1


def uring_rename(old: str, new: str) -> int | None:
    """0, -errno, or None without io_uring."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)   # struct io_uring_params
    fd = libc.syscall(SETUP, 4, params)
    if fd < 0:
        return None
    try:
        sq_entries, cq_entries = struct.unpack_from("<II", params, 0)
        _, sq_tail, sq_mask, _, _, _, sq_array = struct.unpack_from("<7I", params, 40)
        cq_head, _, cq_mask, _, _, cqes = struct.unpack_from("<6I", params, 80)
        sq = mmap.mmap(fd, sq_array + sq_entries * 4, offset=OFF_SQ_RING)
        cq = mmap.mmap(fd, cqes + cq_entries * 16, offset=OFF_CQ_RING)
        sqes = mmap.mmap(fd, sq_entries * 64, offset=OFF_SQES)
        a = ctypes.create_string_buffer(old.encode())
        b = ctypes.create_string_buffer(new.encode())
        sqe = bytearray(64)  # opcode, flags, ioprio, fd (old dirfd), addr2 (new), addr (old),
        struct.pack_into("<BBHiQQIIQ", sqe, 0, OP_RENAMEAT, 0, 0, AT_FDCWD,  # len (new dirfd)
                         ctypes.addressof(b), ctypes.addressof(a), AT_FDCWD & 0xFFFFFFFF, 0, 1)
        sqes[0:64] = bytes(sqe)
        tail = struct.unpack_from("<I", sq, sq_tail)[0]
        mask = struct.unpack_from("<I", sq, sq_mask)[0]
        struct.pack_into("<I", sq, sq_array + (tail & mask) * 4, 0)
        struct.pack_into("<I", sq, sq_tail, tail + 1)
        if libc.syscall(ENTER, fd, 1, 1, ENTER_GETEVENTS, None, 0) < 0:
            return -ctypes.get_errno()
        head = struct.unpack_from("<I", cq, cq_head)[0]
        idx = head & struct.unpack_from("<I", cq, cq_mask)[0]
        res: int = struct.unpack_from("<i", cq, cqes + idx * 16 + 8)[0]
        for m in (sq, cq, sqes):
            m.close()
        return res
    finally:
        os.close(fd)


if __name__ == "__main__":
    r = uring_rename(sys.argv[1], sys.argv[2])
    print(r)
    sys.exit(77 if r is None or r == -22 else 0)   # -EINVAL: no RENAMEAT in this kernel
