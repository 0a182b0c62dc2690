"""docs/install.md "Configuration files": one table per config file, listing exactly the
long options of the command that reads it (moray/daemonconfig.py: the keys are those)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moray.cli import _subparsers, build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "install.md"
COMMANDS = {"agent.yaml": ("agent", "run"), "server.yaml": ("server",),
            "gateway.yaml": ("gateway", "run")}


@pytest.mark.parametrize("file", COMMANDS)
def test_config_tables_list_every_option(file: str) -> None:
    text = DOC.read_text()
    section = text[text.index(f"#### /etc/moray/{file}"):]
    end = section.find("\n\n", section.index("| key"))
    section = section if end < 0 else section[:end]
    keys = re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M)
    p = build_parser()
    for word in COMMANDS[file]:
        p = _subparsers(p)[word]
    options = [longs[0][2:] for a in p._actions
               if (longs := [o for o in a.option_strings if o.startswith("--")])
               and longs[0] not in ("--help", "--config")]
    assert sorted(keys) == sorted(options)
