"""The progress line: drawn on a terminal after the delay, erased at the end; -q and a
non-terminal stderr get none (checked through a real pty)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from moray.controlplane.scanner.progress import TerminalProgress
from tests.fixtures.images.builder import Image


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_drawn_after_the_delay_and_erased() -> None:
    out, clock = io.StringIO(), _Clock()
    p = TerminalProgress(out, delay=2.0, interval=0.2, clock=clock, width=lambda: 200)
    p.start(layers=3, cached=1, total=30 << 20, scanners=["packages", "secrets"])
    p(10 << 20, 30 << 20, "sha256:" + "ab" * 32)
    assert out.getvalue() == ""  # a scan shorter than the delay shows nothing
    clock.now += 2.5
    p(15 << 20, 30 << 20, "sha256:" + "ab" * 32)
    assert out.getvalue().endswith("moray-scan  50%  layers 2/3 (1 cached)  15.0/30.0 MiB  "
                                   "reading abababababab [packages, secrets]")
    drawn = out.getvalue()
    clock.now += 0.1
    p(16 << 20, 30 << 20, "sha256:" + "ab" * 32)
    assert out.getvalue() == drawn  # at most every interval
    p.stage("matching 12 packages against vulnerabilities")
    assert out.getvalue().endswith("matching 12 packages against vulnerabilities")
    p.finish()
    assert out.getvalue().endswith("\r\x1b[K")


def test_cut_to_the_terminal_width() -> None:
    out, clock = io.StringIO(), _Clock()
    p = TerminalProgress(out, delay=0, clock=clock, width=lambda: 40)
    p.start(layers=1, cached=0, total=1 << 20, scanners=["packages", "secrets", "malware"])
    p(1, 1 << 20, "sha256:" + "cd" * 32)
    line = out.getvalue().split("\x1b[K")[-1]
    assert len(line) == 39 and line.endswith("\u2026")


def _scan_on_a_pty(argv: list[str], env: dict[str, str]) -> str:
    controller, terminal = os.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "moray.controlplane.scanner.cli", *argv],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=terminal, env=env, check=True, timeout=120)
        assert proc.returncode == 0
        os.close(terminal)
        chunks = []
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the pty has no writer left
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode()
    finally:
        os.close(controller)


def test_on_a_terminal_unless_quiet(tmp_path: Path) -> None:
    image = tmp_path / "img.tar"
    Image([{"a": b"x" * 4096}, {"b": b"y"}]).write_docker_archive(image)
    env = {**os.environ, "MORAY_PROGRESS_DELAY": "0", "MORAY_DATA_DIR": str(tmp_path / "d"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [str(image), "--no-vulns", "--no-cache", "-o", str(tmp_path / "r.txt")]
    shown = _scan_on_a_pty(argv, env)
    assert "moray-scan 100%  layers 2/2" in shown and shown.endswith("\x1b[K")
    assert _scan_on_a_pty([*argv, "-q"], env) == ""
