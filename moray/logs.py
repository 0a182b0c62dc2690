"""The one logging set-up of every moray command; only ``moray.cli`` (the one entry point)
calls :func:`configure`.

A line is ``[time] level logger: message key=value ...``: the key/values are the record's
structured ``extra`` fields (strings with spaces quoted). Long-running commands (the agent,
the server, a scan worker) log at INFO with timestamps; interactive ones (``moray scan
IMAGE``, the administrative and REST commands) at WARNING (``-v``: INFO, ``-vv``: DEBUG)
without. ``--log-level`` overrides either.
"""

from __future__ import annotations

import logging
import sys

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
TIMESTAMPED = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PLAIN = "%(levelname)s %(name)s: %(message)s"


class StructuredFormatter(logging.Formatter):
    """The message, then the record's ``extra={...}`` context as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = [f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                 for k, v in vars(record).items() if k not in _RECORD_FIELDS]
        return f"{text} {' '.join(extra)}" if extra else text


def level_of(name: str | None, *, verbose: int = 0, daemon: bool = False) -> int:
    """``--log-level NAME`` if given, else INFO for a daemon, WARNING less 10 per ``-v``."""
    if name:
        level = logging.getLevelName(name.upper())
        return level if isinstance(level, int) else logging.INFO
    return logging.INFO if daemon else logging.WARNING - 10 * min(verbose, 2)


def configure(level: int, *, timestamps: bool, quiet: tuple[str, ...] = ()) -> None:
    """Log to stderr at ``level``. Like ``logging.basicConfig``, it leaves a process whose
    root logger already has handlers (an embedding program, pytest) alone. ``quiet``:
    loggers held at WARNING at least (a line per HTTP request, per migration step)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(TIMESTAMPED if timestamps else PLAIN))
    logging.basicConfig(level=level, handlers=[handler])
    for name in quiet:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
