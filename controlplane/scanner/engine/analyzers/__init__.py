"""Package analyzers: each recognises some files by path and turns their content into packages.

An analyzer is pure: ``wants(path, mode, size)`` decides from the tar header alone,
``analyze(path, data, layer)`` parses bytes already read from the layer. ``ANALYZERS`` is
the registry the scanner walks; adding an ecosystem means adding one entry. A
``FileAnalyzer`` can also be handed positioned reads of the file instead of its bytes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from moray.controlplane.scanner.engine.analyzers.elf import ReadAt
from moray.controlplane.scanner.engine.analyzers.gobinary import GoBinaryAnalyzer
from moray.controlplane.scanner.engine.analyzers.java import JavaArchiveAnalyzer
from moray.controlplane.scanner.engine.analyzers.lang import (
    CargoLockAnalyzer,
    NpmAnalyzer,
    PythonAnalyzer,
)
from moray.controlplane.scanner.engine.analyzers.ospkg import ApkAnalyzer, DpkgAnalyzer, RpmAnalyzer
from moray.controlplane.scanner.engine.analyzers.rustbinary import RustAuditableAnalyzer
from moray.controlplane.scanner.engine.model import Package


class Analyzer(Protocol):
    name: str

    def wants(self, path: str, mode: int, size: int) -> bool: ...

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]: ...


@runtime_checkable
class FileAnalyzer(Analyzer, Protocol):
    """An analyzer that can read just the parts of a file it needs (the ELF binaries'):
    ``read_at(offset, size)`` returns bytes of the file, never past ``size``. Files not
    starting with ``magic`` give it nothing."""

    magic: bytes

    def analyze_file(self, path: str, read_at: ReadAt, size: int,
                     layer: str) -> list[Package]: ...


def registry() -> tuple[Analyzer, ...]:
    return (
        DpkgAnalyzer(),
        ApkAnalyzer(),
        RpmAnalyzer(),
        PythonAnalyzer(),
        NpmAnalyzer(),
        CargoLockAnalyzer(),
        JavaArchiveAnalyzer(),
        GoBinaryAnalyzer(),
        RustAuditableAnalyzer(),
    )
