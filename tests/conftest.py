"""Suite-wide policy: with MORAY_REQUIRE_INTEGRATION=1 (set by .ci/run) an integration
test that skips is reported as a failure, so CI cannot go green without having loaded the
BPF programs and started the containers."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

REQUIRE = os.environ.get("MORAY_REQUIRE_INTEGRATION") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE and report.skipped and item.get_closest_marker("integration") is not None:
        report.outcome = "failed"
        report.longrepr = (f"integration test skipped under MORAY_REQUIRE_INTEGRATION=1: "
                           f"{report.longrepr}")
