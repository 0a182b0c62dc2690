"""Fixtures of the tier-aware modules (run on this host and in every kernel-matrix guest):
one agent per module, and the enforcement tiers it reports for this kernel. A module that
needs another agent (test_restart.py: one per test) defines its own."""

from __future__ import annotations

import json
from collections.abc import Iterator

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
