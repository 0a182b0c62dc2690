"""Test programs and images for "exec rules hold however the code gets mapped" (issue 13):
tests/integration/test_enforce_exec_mapped.py (this host, kill tier) and
tests/kernels/guest_tests/test_exec_mapped.py (every matrix row).

* :func:`build_programs` -- gcc-built helpers (dynamic, glibc): ``mapx`` (mmap PROT_EXEC
  of a file; mmap PROT_READ then mprotect PROT_EXEC; one mprotect spanning an anonymous
  page and the file's page; mmap PROT_READ under personality READ_IMPLIES_EXEC), ``dl``
  (dlopen), ``fexec`` (fexecve / execveat of a file descriptor), and ``evil.so`` whose
  constructor writes a marker.
* :func:`glibc_image` -- a busybox rootfs plus the host's glibc loader and libc, its
  /usr/bin/head, the helpers in /usr/local/bin, evil.so in /usr/local/lib and an image
  script /usr/local/bin/tool.sh.
* :func:`overlay` -- that image as the lower layer of an overlayfs, so files written or
  modified in the container are drift.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.containers import build_rootfs

LOADER = "/lib64/ld-linux-x86-64.so.2"
LOADER_REAL = "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"

MAPX_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <unistd.h>
/* mapx mmap|mprotect|span|readexec FILE: map FILE's first page executable, then say so */
int main(int argc, char **argv) {
    int fd = open(argv[2], O_RDONLY);
    char *p, *a;
    if (fd < 0) { perror("open"); return 2; }
    if (!strcmp(argv[1], "mmap")) {
        p = mmap(0, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 3; }
    } else if (!strcmp(argv[1], "mprotect")) {
        p = mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 3; }
        if (mprotect(p, 4096, PROT_READ | PROT_EXEC)) { perror("mprotect"); return 4; }
    } else if (!strcmp(argv[1], "readexec")) { /* PROT_READ is PROT_EXEC under this */
        personality(READ_IMPLIES_EXEC);
        p = mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 3; }
    } else { /* an anonymous page, the file's page right after it, one mprotect over both */
        a = mmap(0, 8192, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (a == MAP_FAILED) { perror("mmap anon"); return 3; }
        p = mmap(a + 4096, 4096, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 3; }
        if (mprotect(a, 8192, PROT_READ | PROT_EXEC)) { perror("mprotect"); return 4; }
    }
    printf("MAPPED-EXEC\n");
    return 0;
}
"""

DL_C = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("dlopen failed: %s\n", dlerror()); return 5; }
    printf("DLOPENED\n");
    return 0;
}
"""

FEXEC_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
extern char **environ;
/* fexec fexecve|execveat FILE: run FILE through a descriptor (not close-on-exec, so an
 * interpreter can open /dev/fd/N) */
int main(int argc, char **argv) {
    int fd = open(argv[2], O_RDONLY);
    char *args[] = {argv[2], 0};
    if (fd < 0) { perror("open"); return 2; }
    if (!strcmp(argv[1], "fexecve"))
        fexecve(fd, args, environ);
    else
        syscall(SYS_execveat, fd, "", args, environ, AT_EMPTY_PATH);
    perror("exec");
    return 6;
}
"""

EVIL_C = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void ran(void) {
    int fd = open("/tmp/lib-ran", O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
    write(1, "LIB-RAN\n", 8);
}
"""

TOOL_SH = "#!/bin/sh\necho tool-ok\n"


def build_programs(dest: Path) -> dict[str, Path]:
    """Compile the helpers into *dest*; returns name -> path."""
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, src, extra in (("mapx", MAPX_C, []), ("dl", DL_C, []), ("fexec", FEXEC_C, []),
                             ("evil.so", EVIL_C, ["-shared", "-fPIC"])):
        c = dest / f"{name}.c"
        c.write_text(src)
        out[name] = dest / name
        subprocess.run(["gcc", "-O1", *extra, "-o", str(out[name]), str(c)], check=True,
                       capture_output=True)
    return out


def glibc_image(dest: Path, programs: dict[str, Path]) -> Path:
    """A busybox rootfs with glibc, /usr/bin/head and the helpers (see module doc)."""
    build_rootfs(dest)
    libdir = dest / "lib" / "x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    shutil.copy2(LOADER_REAL, libdir / "ld-linux-x86-64.so.2")
    shutil.copy2(LIBC, libdir / "libc.so.6")
    (dest / "lib64").mkdir()
    (dest / "lib64" / "ld-linux-x86-64.so.2").symlink_to(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    for d in ("usr/bin", "usr/local/bin", "usr/local/lib"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/head", dest / "usr/bin/head")
    for name in ("mapx", "dl", "fexec"):
        shutil.copy2(programs[name], dest / "usr/local/bin" / name)
    shutil.copy2(programs["evil.so"], dest / "usr/local/lib/evil.so")
    tool = dest / "usr/local/bin/tool.sh"
    tool.write_text(TOOL_SH)
    tool.chmod(0o755)
    return dest


@contextlib.contextmanager
def overlay(lower: Path) -> Iterator[Path]:
    """An overlayfs over *lower* (the image); yields the merged directory."""
    work = Path(tempfile.mkdtemp(prefix="moray-ovl-"))
    upper, ovw, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, ovw, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={ovw}", str(merged)],
                   check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
