"""One import name: every module of moray is imported as ``moray.*``, never through a
generic top-level name (``agent``, ``controlplane``, ``api``) that would land in
site-packages or load a second copy of a module."""

from __future__ import annotations

import re
from pathlib import Path

import moray.agent
import moray.api
import moray.controlplane

ROOT = Path(__file__).resolve().parents[2]
BARE = re.compile(r"^\s*(from|import)\s+(agent|controlplane|api)(\.|\s|$)", re.M)
MODULE_ARG = re.compile(r"""["']-m["'],\s*["'](agent|controlplane|api)\.""")


def _sources() -> list[Path]:
    out = sorted((ROOT / "moray").glob("*.py"))  # its folders are links to the others
    for top in ("agent", "controlplane", "api", "tests", "bench"):
        out += sorted((ROOT / top).rglob("*.py"))
    return out


def test_no_bare_top_level_imports() -> None:
    bad = []
    for path in _sources():
        text = path.read_text(errors="replace")
        for m in (*BARE.finditer(text), *MODULE_ARG.finditer(text)):
            line = text.count("\n", 0, m.start()) + 1
            bad.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0).strip()}")
    assert bad == []


def test_the_namespace_maps_the_top_folders() -> None:
    for mod, folder in ((moray.agent, "agent"), (moray.controlplane, "controlplane"),
                        (moray.api, "api")):
        assert Path(mod.__file__ or "").resolve().parent == ROOT / folder
