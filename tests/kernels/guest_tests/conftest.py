"""Fixtures of the tier-aware modules (run on this host and in every kernel-matrix guest):
one agent per module, the enforcement tiers it reports for this kernel, and a rootfs with
the namespace / setid / mount test program. A module that
needs another agent (test_restart.py: one per test) defines its own."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent_proc import AgentProc


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProc]:
    with AgentProc() as a:
        yield a


@pytest.fixture(scope="module")
def tiers(agent: AgentProc) -> dict[str, str]:
    """`moray-agent probe --json`'s tiers: rule kind -> lsm-deny | kill | kill-after ..."""
    t: dict[str, str] = json.loads(agent.cli("probe", "--json").stdout)["tiers"]
    return t


@pytest.fixture()
def rootfs() -> Iterator[Path]:
    """A busybox rootfs with /bin/sysargs (tests/helpers/sysargs.py), for runc."""
    from tests.helpers.sysargs import sysargs_rootfs

    d = Path(tempfile.mkdtemp(prefix="moray-sysargs-"))
    try:
        yield sysargs_rootfs(d / "rootfs")
    finally:
        shutil.rmtree(d, ignore_errors=True)
