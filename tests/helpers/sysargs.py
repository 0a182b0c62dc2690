"""The static test program of the issue 13 namespace / setid tests (tests/fixtures/c/
sysargs.c): built with gcc into tests/fixtures/c/bin/ (ignored by git) where gcc exists.
The kernel matrix copies the repository tree into its guests, bin/ included, so a host run
(or `python -m tests.helpers.sysargs`) before the matrix gives the guests the binary."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "fixtures" / "c" / "sysargs.c"
BIN = SRC.parent / "bin" / "sysargs"


def sysargs_binary() -> Path | None:
    """The built program (rebuilt when the source is newer), or None without gcc and
    without a built copy."""
    fresh = BIN.exists() and BIN.stat().st_mtime >= SRC.stat().st_mtime
    if not fresh and shutil.which("gcc"):
        BIN.parent.mkdir(exist_ok=True)
        tmp = BIN.with_suffix(".tmp")
        subprocess.run(["gcc", "-static", "-O1", "-Wall", "-o", str(tmp), str(SRC)],
                       check=True)
        tmp.rename(BIN)
    return BIN if BIN.exists() else None


def sysargs_rootfs(dest: Path) -> Path:
    """A busybox rootfs in *dest* with the program as /bin/sysargs (the test is skipped
    where it cannot be built)."""
    import pytest

    from tests.helpers.containers import build_rootfs

    exe = sysargs_binary()
    if exe is None:
        pytest.skip("tests/fixtures/c/bin/sysargs not built (needs gcc on the host)")
    root = build_rootfs(dest)
    shutil.copy2(exe, root / "bin" / "sysargs")
    return root


def mountpoints(stdout: str) -> list[str]:
    """Mount points of the container's mountinfo a script printed after MOUNTINFO."""
    info = stdout.split("MOUNTINFO", 1)[1] if "MOUNTINFO" in stdout else ""
    return [line.split()[4] for line in info.splitlines() if len(line.split()) > 4]


if __name__ == "__main__":
    print(sysargs_binary())
