"""``moray vulndb import|status`` and ``moray malware import``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.cli import main


def test_vulndb_import_and_status(tmp_path: Path, advisories: Path,
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORAY_DATA_DIR", str(tmp_path))
    assert main(["vulndb", "import", str(advisories)]) == 0
    out = capsys.readouterr().out
    assert "31 records (alpine-secdb 2, debian-tracker 5, osv 24)" in out
    assert main(["vulndb", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["generation"] == 1 and status["by_ecosystem"]["pypi"] == 12
    assert (tmp_path / "moray.db").exists()
    (tmp_path / "bad.json").write_text("[1, 2")
    assert main(["vulndb", "import", str(tmp_path / "bad.json")]) == 1
    assert main(["vulndb", "import", str(tmp_path / "nope")]) == 2


def test_malware_import(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORAY_DATA_DIR", str(tmp_path / "data"))
    rules = tmp_path / "team.yar"
    rules.write_text('rule Team { strings: $a = "evil" condition: $a }')
    assert main(["malware", "import", str(rules)]) == 0
    assert (tmp_path / "data" / "malware" / "team.yar").exists()
    (tmp_path / "broken.yar").write_text("rule {")
    assert main(["malware", "import", str(tmp_path / "broken.yar")]) == 2
    assert "YARA syntax" in capsys.readouterr().err
