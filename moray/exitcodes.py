"""The exit codes of every moray command, in one table (docs/cli.md shows it).

=====  ===========  ===================================================================
code   name         meaning
=====  ===========  ===================================================================
0      OK           done; the image passed (or no policy was given); a worker or the
                    agent stopped
1      FAILED       the command ran and the answer is no: the image failed
                    ``--fail-on``/``--policy``; the server or the store refused a request
                    (an HTTP error, an unknown id: :class:`~moray.errors.ControlPlaneError`);
                    a policy file is invalid (``moray agent policy lint|apply|delete``);
                    an advisory import skipped records
2      ERROR        the command could not be done: bad arguments; an unreadable or
                    refused image, a registry error, a token a worker's server refused
                    (:class:`~moray.errors.ScanError`); an agent start-up step failed
                    (:class:`~moray.errors.KernelError`); an unusable configuration or
                    document (:class:`~moray.errors.ConfigError`,
                    :class:`~moray.errors.ValidationError`); an OS error; the reader of the
                    output went away
3      UNREACHABLE  the server could not be reached (:class:`~moray.errors.ServerUnreachable`)
130    INTERRUPTED  interrupted (Ctrl-C)
=====  ===========  ===================================================================

``moray.cli`` catches :class:`~moray.errors.MorayError` (and ``OSError``) at its one entry
point and exits with :func:`for_error`; commands return 0 or 1 themselves.
"""

from __future__ import annotations

from moray.errors import (
    ConfigError,
    ControlPlaneError,
    KernelError,
    MorayError,
    ScanError,
    ServerUnreachable,
    ValidationError,
)

OK = 0
FAILED = 1
ERROR = 2
UNREACHABLE = 3
INTERRUPTED = 130

# the first kind an error is an instance of gives its code (most specific first)
BY_KIND: tuple[tuple[type[BaseException], int], ...] = (
    (ServerUnreachable, UNREACHABLE),
    (ControlPlaneError, FAILED),
    (ScanError, ERROR),
    (KernelError, ERROR),
    (ValidationError, ERROR),
    (ConfigError, ERROR),
    (MorayError, ERROR),
    (OSError, ERROR),          # BrokenPipeError included: the reader went away (``| head``)
    (KeyboardInterrupt, INTERRUPTED),
)


def for_error(err: BaseException) -> int:
    """The exit code of a command that ended with ``err``."""
    for kind, code in BY_KIND:
        if isinstance(err, kind):
            return code
    return ERROR

