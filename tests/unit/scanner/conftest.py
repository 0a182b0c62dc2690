from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the repository root, so `controlplane` and `tests.fixtures.images` import without an install
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from moray.controlplane.scanner.engine.scan import ScanOptions
from moray.controlplane.scanner.engine.secrets import SecretScanner


@pytest.fixture
def options() -> ScanOptions:
    return ScanOptions(secrets=SecretScanner())
