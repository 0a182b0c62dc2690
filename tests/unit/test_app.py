"""Start-up: one list of steps (Agent.steps); the docs that name them say the same."""

from __future__ import annotations

import re
from pathlib import Path

from moray.agent import app
from moray.agent.app import Agent, Config

ROOT = Path(__file__).resolve().parents[2]


def _names(text: str) -> list[str]:
    return re.findall(r"[a-z_]+", text.replace("`", ""))


def test_docs_list_the_steps_of_the_code(tmp_path: Path) -> None:
    steps = [name for name, _fn in Agent(Config(proc=str(tmp_path))).steps]
    assert steps[0] == "check_host" and steps[-1] == "start_pipeline"
    notes = (ROOT / "docs" / "notes.md").read_text()
    listed = notes[notes.index("`Agent.steps`: ") + len("`Agent.steps`: "):]
    assert _names(listed[:listed.index(";")]) == steps
    doc = app.__doc__ or ""
    listed = doc[doc.index("check_host"):]
    assert _names(listed[:listed.index("\n\n")]) == steps
