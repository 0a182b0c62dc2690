"""``moray vulndb import|status`` and ``moray malware import``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moray.controlplane.cli import main
from tests.fixtures.images.builder import Image


def test_vulndb_import_and_status(tmp_path: Path, advisories: Path,
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORAY_DATA_DIR", str(tmp_path))
    assert main(["vulndb", "import", str(advisories)]) == 0
    out = capsys.readouterr().out
    assert "38 records (alpine-secdb 2, debian-tracker 5, nvd 7, osv 24)" in out
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


def test_scan_enqueue_worker_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch, advisories: Path) -> None:
    monkeypatch.setenv("MORAY_DATA_DIR", str(tmp_path / "data"))
    image = tmp_path / "img.tar"
    Image([{"etc/hello": b"x"}]).write_docker_archive(image)
    policy = tmp_path / "p.yaml"
    policy.write_text("kind: ImageAssurancePolicy\nmetadata: {name: p}\nspec: {notRoot: true}\n")
    assert main(["scan", "enqueue", str(image), "--policy", str(policy)]) == 0
    assert main(["scan", "worker", "--once", "--name", "w1"]) == 0
    assert "done 0, failed 1" in capsys.readouterr().out  # no vulnerability data yet
    assert main(["vulndb", "import", str(advisories / "GO-2020-0015.json")]) == 0
    assert main(["scan", "enqueue", str(image), "--policy", str(policy)]) == 0
    assert main(["scan", "worker", "--once", "--name", "w1"]) == 0
    assert "done 1, failed 0" in capsys.readouterr().out
    assert main(["scan", "jobs"]) == 0
    assert "done" in capsys.readouterr().out
    assert main(["vulndb", "import", str(tmp_path / "p.yaml")]) == 1  # not advisories
    assert main(["scan", "rescan-stale"]) == 0
    assert "queued 0 rescans" in capsys.readouterr().out
    assert main(["vulndb", "import", str(advisories / "GHSA-35jh-r3h4-6jhm.json")]) == 0
    assert main(["scan", "rescan-stale"]) == 0
    assert "queued 1 rescans" in capsys.readouterr().out
