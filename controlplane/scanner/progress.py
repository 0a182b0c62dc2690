"""The progress line ``moray scan IMAGE`` draws on a terminal.

One line on stderr, redrawn in place: layers read (and taken from the cache), bytes,
percentage, the layer being read, the scanners at work, then the stage after the layers
(merging, matching vulnerabilities). Drawn only once the scan has run ``delay`` seconds
(a scan that ends sooner never shows it), at most every ``interval`` seconds, and erased
at the end so the report starts on a clean line. The CLI uses it only when stderr is a
terminal and ``-q`` was not given.

Not tqdm: tqdm draws nothing when the terminal reports no size (a pty with 0 rows, as
``script`` and some CI runners give), and the scan needs a few fields more than a bar.
No thread: a ticking thread would stop the scan from forking its layer workers
(``scan._workers``), so the line is redrawn from the scan's own callbacks.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from typing import TextIO

MIB = 1 << 20


class TerminalProgress:
    def __init__(self, stream: TextIO, *, delay: float = 2.0, interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic,
                 width: Callable[[], int] | None = None) -> None:
        self._out = stream
        self._delay = delay
        self._interval = interval
        self._clock = clock
        self._width = width or (lambda: shutil.get_terminal_size((100, 20)).columns or 100)
        self._started = clock()
        self._last = -1.0
        self._drawn = False
        self._layers = 0
        self._cached = 0
        self._seen: set[str] = set()
        self._done = 0
        self._total = 0
        self._layer = ""
        self._stage = ""
        self._scanners = ""

    # the scan's calls (controlplane.scanner.engine.scan)

    def start(self, layers: int, cached: int, total: int, scanners: Sequence[str]) -> None:
        self._layers, self._cached, self._total = layers, cached, total
        self._scanners = ", ".join(scanners)

    def __call__(self, done: int, total: int, layer: str) -> None:
        """Bytes of layers done (cached ones included) and the layer being read."""
        self._done, self._total = done, total
        if layer:
            self._layer = layer
            self._seen.add(layer)
        self._draw()

    def stage(self, name: str) -> None:
        self._stage = name
        self._layer = ""
        self._draw(force=True)

    def finish(self) -> None:
        if self._drawn:
            self._out.write("\r\x1b[K")
            self._out.flush()
            self._drawn = False

    # drawing

    def line(self) -> str:
        pct = f"{100 * self._done // self._total:3d}%" if self._total else "   -"
        read = min(len(self._seen) + self._cached, self._layers) if self._layers else 0
        parts = [f"moray-scan {pct}",
                 f"layers {read}/{self._layers}"
                 + (f" ({self._cached} cached)" if self._cached else ""),
                 f"{self._done / MIB:.1f}/{self._total / MIB:.1f} MiB"]
        if self._stage:
            parts.append(self._stage)
        elif self._layer:
            parts.append(f"reading {self._layer.removeprefix('sha256:')[:12]}"
                         + (f" [{self._scanners}]" if self._scanners else ""))
        text = "  ".join(parts)
        width = max(self._width() - 1, 10)
        return text if len(text) <= width else text[:width - 1] + "\u2026"

    def _draw(self, force: bool = False) -> None:
        now = self._clock()
        if now - self._started < self._delay:
            return
        if not force and self._last >= 0 and now - self._last < self._interval:
            return
        self._last = now
        self._out.write("\r\x1b[K" + self.line())
        self._out.flush()
        self._drawn = True
