"""What counts as drift: code written or changed after the MicroEnforcer started.

The kernel stamps a file's status-change time (ctime) on every write, truncate, rename,
link, chmod and chown, and no unprivileged call can set it back: a file whose ctime is at
or after the start (less one clock tick) was created or changed since. That alone needs
no walk of the image at start. The optional start-time inventory (``--drift-inventory
DIR``) adds content digests: every executable file (any x bit) and shared object under
DIR (its filesystem only) is hashed (SHA-256) at start, and a file changed after start
whose path is in the inventory with the same digest is not drift (a ``chmod``, ``touch``
or same-bytes copy over an image file). A path not in the inventory and changed after
start is drift, whatever its content (``cp /bin/ls /tmp/ls`` then ``/tmp/ls``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

TICK_NS = 50_000_000   # the file clock is coarse: changes this close before start count


def sha256_of(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


class Inventory:
    def __init__(self, start_ns: int, roots: Iterable[str] = ()) -> None:
        self.start_ns = start_ns - TICK_NS
        self.digests: dict[str, str] = {}
        t0 = time.monotonic()
        size = 0
        for root in roots:
            size += self._walk(os.path.realpath(root))
        if self.digests:
            log.info("drift inventory: %d files, %.1f MB hashed in %.2f s", len(self.digests),
                     size / 1e6, time.monotonic() - t0)

    def _walk(self, root: str) -> int:
        size = 0
        try:
            dev = os.stat(root).st_dev
        except OSError as err:
            log.warning("drift inventory: %s: %s", root, err.strerror)
            return 0
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if _same_dev(os.path.join(d, x), dev)]
            for name in files:
                p = os.path.join(d, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or not (
                        st.st_mode & 0o111 or ".so" in name):
                    continue
                digest = sha256_of(p)
                if digest is not None:
                    self.digests[p] = digest
                    size += st.st_size
        return size

    def drifted(self, path: str, st: os.stat_result) -> bool:
        """*path*: the file's resolved path; *st*: its stat, taken now."""
        if not stat.S_ISREG(st.st_mode):
            return True
        if st.st_ctime_ns < self.start_ns:
            return False
        want = self.digests.get(path)
        return want is None or sha256_of(path) != want


def _same_dev(path: str, dev: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_dev == dev
