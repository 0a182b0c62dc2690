"""Log set-up for the control plane's entry points (moray-server, moray-scanner-worker):
``time level logger message key=value ...``, the key/values being a record's structured
``extra`` fields. Only entry points call ``configure_logging``."""

from __future__ import annotations

import logging
import sys


class StructuredFormatter(logging.Formatter):
    """``time level logger message key=value ...``: the structured ``extra`` fields."""

    _STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message",
                                                                         "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = " ".join(f"{k}={v!r}" for k, v in vars(record).items() if k not in self._STD)
        return f"{base} {extra}" if extra else base


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
