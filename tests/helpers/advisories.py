"""Where the tests find real vulnerability advisories: $MORAY_ADVISORIES, else the copy in
tests/fixtures/advisories (verbatim from the workplace's shared/advisories, 172 KB; its
SOURCES.md names every record's origin and licence). In the repository, so a clone
anywhere runs the scanner tests."""

from __future__ import annotations

import os
from pathlib import Path

ADVISORIES = Path(os.environ.get("MORAY_ADVISORIES",
                                 Path(__file__).resolve().parents[1] / "fixtures" / "advisories"))
