"""moray's one error hierarchy.

Every error moray raises on purpose derives from :class:`MorayError`, through one of a few
kinds that say where the fault lies (``moray.cli`` catches the root at its one entry point,
prints the message and exits with the code ``moray.exitcodes`` gives the kind):

- :class:`ValidationError`: an input document (a runtime policy, a detection ruleset) does
  not validate; ``problems`` lists every ``file:line: field: message`` found, as
  :class:`Problem` records;
- :class:`ConfigError`: a configuration or command-line value that cannot be used (an output
  URL, a rule condition, a policy too large for the kernel's tables, a client config file);
- :class:`KernelError`: the kernel or the host refused or returned something unusable (a BPF
  program or attachment, BTF, libbpf, a namespace, a ring-buffer record, a runtime's state);
- :class:`ControlPlaneError`: the control plane refused or failed (enrollment, the REST API,
  the store, a policy the server cannot accept, certificates); :class:`ServerUnreachable`:
  a client could not reach the server at all;
- :class:`ScanError`: the image scanner refused an input; it carries the image, the layer
  digest and the path inside the layer (``controlplane/scanner/errors.py`` holds its kinds).

Classes that callers also catch as a builtin (``except ValueError``, ``except OSError``,
``except LookupError``) keep that builtin as a second base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class MorayError(Exception):
    """The root: every error moray raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem: where (file, 1-based line, 0 if unknown, field path) and what."""

    file: str
    line: int
    field: str
    message: str

    @property
    def where(self) -> str:
        """The field path (the detection ruleset's loader calls it ``where``)."""
        return self.field

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ValidationError(MorayError):
    """A document failed validation; ``problems`` lists every problem found, one a line in
    the message."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(MorayError):
    """A configuration or command-line value that cannot be used; the message says which."""


class KernelError(MorayError):
    """The kernel or the host refused an operation or returned something unusable."""


class ControlPlaneError(MorayError):
    """The control plane (server, store, REST API, enrollment) refused or failed."""


class ServerUnreachable(ControlPlaneError):
    """A client could not reach moray-server at all (connection, TLS, timeout)."""


class ScanError(MorayError):
    """Base class of every error the scanner raises on purpose."""

    def __init__(self, message: str, *, source: str = "", layer: str = "", path: str = "") -> None:
        self.message = message
        self.source = source
        self.layer = layer
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [
            f"{name}={value}"
            for name, value in (("source", self.source), ("layer", self.layer), ("path", self.path))
            if value
        ]
        return f"{self.message} ({', '.join(where)})" if where else self.message
