"""moray-scan end to end on built images: every format, exit codes, cache, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from moray.controlplane.scanner.cli import main
from moray.controlplane.scanner.engine.cache import FileLayerCache, default_cache_path
from moray.controlplane.scanner.engine.malware import MalwareScanner
from moray.controlplane.scanner.engine.scan import ScanOptions
from moray.controlplane.scanner.engine.secrets import SecretScanner
from moray.controlplane.scanner.engine.source import ArchiveSource
from moray.controlplane.store.scanstore import ScanStore
from moray.controlplane.store.scanstore import data_dir as store_data_dir
from moray.controlplane.vulndb.importer import import_path
from tests.fixtures.images import scenarios
from tests.fixtures.images.builder import Device, Hardlink, Image, Symlink
from tests.unit.vulndb.conftest import advisories_dir


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    db = root / "data" / "moray.db"
    store = ScanStore(db)
    import_path(advisories_dir(), store)
    store.close()
    debian = root / "debian.tar"
    scenarios.debian_app().write_docker_archive(debian)
    alpine = root / "alpine"
    alpine.mkdir()
    scenarios.alpine_app().write_oci_layout(alpine)
    return {"db": db, "debian": debian, "alpine": alpine, "root": root}


@pytest.fixture(autouse=True)
def data_dir(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORAY_DATA_DIR", str(env["db"].parent))
    monkeypatch.delenv("MORAY_SERVER", raising=False)
    monkeypatch.delenv("MORAY_TOKEN", raising=False)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_and_fail_on(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(env["debian"]), "--fail-on", "critical")
    assert code == 1  # EICAR and the AWS key are critical findings
    for expected in ("CVE-2023-4911", "2.36-9+deb12u3", "CVE-2023-5363", "CVE-2018-18074",
                     "CVE-2020-8203", "CVE-2023-39325", "aws-access-key-id",
                     "yara:EICAR_Test_File", "image runs as root", "VERDICT: FAIL"):
        assert expected in out, expected
    assert "wJalrXUtnFEMI" not in out  # masked
    assert "zlib" not in out.split("Secrets:")[0].split("VULNERABILITY")[1]
    code, _, _ = _run(capsys, str(env["debian"]), "--no-malware", "--no-secrets",
                      "--fail-on", "critical")
    assert code == 0
    code, _, _ = _run(capsys, str(env["debian"]), "--no-malware", "--no-secrets",
                      "--fail-on", "high")
    assert code == 1


def test_json_report(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(env["alpine"]), "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["os"] == {"id": "alpine", "version_id": "3.18", "codename": ""}
    vulns = {(v["package"]["name"], v["id"]) for v in doc["vulnerabilities"]}
    assert ("busybox", "CVE-2023-42366") in vulns and ("libssl3", "CVE-2023-5363") in vulns
    assert doc["config_findings"] == []  # runs as 1000


def test_sarif(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(env["debian"]), "--format", "sarif")
    assert code == 0
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    for res in run["results"]:
        assert rule_ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note")
    assert any(r["ruleId"] == "secret/aws-access-key-id" for r in run["results"])
    assert "wJalrXUtnFEMI" not in out
    by_id = {r["id"]: r["properties"]["security-severity"] for r in run["tool"]["driver"]["rules"]}
    assert by_id["CVE-2021-23337"] == "7.2" and by_id["CVE-2019-10906"] == "8.6"  # CVSS


def test_cyclonedx_is_valid(env: dict[str, Path], capsys: pytest.CaptureFixture[str],
                            tmp_path: Path) -> None:
    target = tmp_path / "sbom.json"
    code, _, _ = _run(capsys, str(env["debian"]), "--format", "cyclonedx", "-o", str(target))
    assert code == 0
    text = target.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    purls = {c["purl"] for c in bom["components"]}
    assert "pkg:pypi/requests@2.19.0" in purls
    assert "pkg:golang/golang.org/x/net@v0.7.0" in purls
    assert any(v["id"] == "CVE-2023-4911" for v in bom["vulnerabilities"])


def test_errors_exit_2(env: dict[str, Path], capsys: pytest.CaptureFixture[str],
                       tmp_path: Path) -> None:
    code, _, err = _run(capsys, str(tmp_path / "missing.tar"))
    assert code == 2 and "no such image file or directory" in err
    (tmp_path / "junk.tar").write_bytes(b"junk")
    code, _, err = _run(capsys, str(tmp_path / "junk.tar"))
    assert code == 2 and "cannot read archive" in err
    code, _, err = _run(capsys, "registry.example.test/app:1", "--insecure-registry")
    assert code == 2 and "loopback" in err
    code, _, err = _run(capsys, str(env["alpine"]), "--server", "http://127.0.0.1:9")
    assert code == 2 and "--token" in err
    code, _, err = _run(capsys, str(env["alpine"]), "--server", "http://127.0.0.1:9",
                        "--token", "t")
    assert code == 2 and "server unreachable" in err


def test_secret_config(env: dict[str, Path], capsys: pytest.CaptureFixture[str],
                       tmp_path: Path) -> None:
    base = ["--format", "json", "--no-vulns", "--no-malware", "--no-cache"]
    code, out, _ = _run(capsys, str(env["debian"]), *base)
    assert {"aws-access-key-id", "aws-secret-access-key"} <= {
        s["rule"] for s in json.loads(out)["secrets"]}
    cfg = tmp_path / "secrets.yaml"
    cfg.write_text("disable-rules: [aws-access-key-id, aws-secret-access-key]\n")
    code, out, _ = _run(capsys, str(env["debian"]), *base, "--secret-config", str(cfg))
    assert code == 0
    assert not {"aws-access-key-id", "aws-secret-access-key"} & {
        s["rule"] for s in json.loads(out)["secrets"]}
    cfg.write_text("disable-rules: [aws-key]\n")
    code, _, err = _run(capsys, str(env["debian"]), *base, "--secret-config", str(cfg))
    assert code == 2
    assert f"{cfg}:1: disable-rules: no rule with id 'aws-key'" in err


def test_layer_cache_and_recorded_verdict(env: dict[str, Path],
                                          capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: moray/v1\nkind: ImageAssurancePolicy\n"
                      "metadata: {name: prod}\nspec:\n  failOn: high\n  fixableOnly: true\n"
                      "  noMalware: true\n  notRoot: true\n  requiredLabels: [team, owner]\n"
                      "  allowedRegistries: ['registry.example.test']\n")
    code, _, _ = _run(capsys, str(env["debian"]), "--policy", str(policy), "--record-verdict")
    assert code == 1
    cache = FileLayerCache(default_cache_path())
    layers = ArchiveSource(env["debian"]).resolve().layers
    assert all(cache.get_layer(layer.digest, ScanOptions(secrets=SecretScanner(),
                                                         malware=MalwareScanner()).cache_version)
               for layer in layers)
    assert default_cache_path().parent == store_data_dir()  # the store's data dir too
    store = ScanStore(env["db"])
    digest = ArchiveSource(env["debian"]).resolve().digest
    (verdict,) = store.verdicts(digest)
    assert verdict.policy == "prod" and not verdict.passed
    text = "\n".join(verdict.reasons)
    assert "runs as root" in text and "'owner' missing" in text and "malware" in text
    assert "registry" not in text  # allowed


def test_no_vulnerability_data_fails(env: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """A fresh install, an empty store and a stale one fail with 2 and the import hint; a
    read creates nothing; --allow-stale-vulndb scans with a warning."""
    fresh = tmp_path / "fresh" / "moray"
    monkeypatch.setenv("MORAY_DATA_DIR", str(fresh))
    code, out, err = _run(capsys, str(env["alpine"]), "--fail-on", "critical", "-f", "sarif")
    assert code == 2 and out == ""
    assert "no vulnerability store" in err and "moray vulndb import" in err
    assert not fresh.exists() and not fresh.parent.exists()
    code, out, err = _run(capsys, str(env["alpine"]), "--no-cache", "--allow-stale-vulndb",
                          "-f", "json")
    assert code == 0 and json.loads(out)["vulnerabilities"] == []
    assert "--allow-stale-vulndb" in caplog.text and not fresh.exists()

    empty = tmp_path / "empty.db"
    ScanStore(empty).close()
    code, _, err = _run(capsys, str(env["alpine"]), "--db", str(empty), "--no-cache")
    assert code == 2 and "is empty" in err and "moray vulndb import" in err

    stale = tmp_path / "stale.db"
    store = ScanStore(stale, clock=lambda: 1_000_000.0)  # imported in 1970
    import_path(advisories_dir(), store)
    store.close()
    code, _, err = _run(capsys, str(env["alpine"]), "--db", str(stale), "--no-cache")
    assert code == 2 and "days ago (--max-vulndb-age 7)" in err
    code, out, _ = _run(capsys, str(env["alpine"]), "--db", str(stale), "--no-cache",
                        "--max-vulndb-age", "0", "-f", "json")
    assert code == 0 and json.loads(out)["vulnerabilities"]
    code, out, err = _run(capsys, str(env["alpine"]), "--db", str(stale), "--no-cache",
                          "--allow-stale-vulndb", "-f", "json")
    assert code == 0 and json.loads(out)["vulnerabilities"] and "days ago" in caplog.text
    code, _, _ = _run(capsys, str(env["alpine"]), "--db", str(empty), "--no-cache",
                      "--no-vulns")
    assert code == 0


def test_fail_on_unknown(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Alpine secdb rates nothing: fail-on low passes but says what it did not count;
    fail-on unknown counts every vulnerability."""
    base = [str(env["alpine"]), "--no-malware", "--no-secrets"]
    code, _, err = _run(capsys, *base, "--fail-on", "low")
    assert code == 0
    assert "vulnerabilities have no severity from any source and were not counted by " \
           "fail-on low (CVE-2023-42363" in err and "fail-on unknown counts them" in err
    code, out, err = _run(capsys, *base, "--fail-on", "unknown")
    assert code == 1 and "vulnerabilities at unknown or above" in out and "note:" not in err


def test_hostile_entries_count_towards_the_gate(env: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    image = tmp_path / "hostile.tar"
    Image([{"etc/os-release": b"ID=alpine\nVERSION_ID=3.18.4\n"},
           [("../../../tmp/pwn", b"x"), ("etc/shadow-link", Hardlink("/etc/shadow")),
            ("app/out", Symlink("../../../../../etc")), ("dev/mem", Device())]],
          config={"User": "1000"}).write_docker_archive(image)
    base = [str(image), "--no-malware", "--no-secrets"]
    code, out, _ = _run(capsys, *base, "--fail-on", "high")
    assert code == 1 and "4 other findings at high or above" in out
    assert "Hostile layer entries (refused):" in out and "path-traversal" in out
    assert _run(capsys, *base, "--fail-on", "critical")[0] == 0
    code, out, _ = _run(capsys, *base, "-f", "sarif")
    rules = {r["ruleId"]: r for r in json.loads(out)["runs"][0]["results"]}
    assert {"layer/path-traversal", "layer/hardlink-escape", "layer/symlink-escape",
            "layer/device-file"} <= set(rules)
    assert rules["layer/path-traversal"]["level"] == "error"
    code, out, _ = _run(capsys, *base, "-f", "json")
    assert {e["rule"] for e in json.loads(out)["unsafe_entries"]} == {
        "path-traversal", "hardlink-escape", "symlink-escape", "device-file"}
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: moray/v1\nkind: ImageAssurancePolicy\n"
                      "metadata: {name: p}\nspec:\n  noUnsafeEntries: true\n")
    code, out, _ = _run(capsys, *base, "--policy", str(policy))
    assert code == 1 and "4 hostile layer entries" in out


def test_quiet_silences_engine_warnings(env: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    """-q: nothing on stderr for a hostile entry (it is in the report); without -q, logged."""
    import subprocess
    import sys

    image = tmp_path / "h.tar"
    Image([{"../escape": b"x"}]).write_docker_archive(image)
    argv = [str(image), "--no-vulns", "--no-cache", "--no-malware", "--no-secrets"]
    quiet = subprocess.run([sys.executable, "-m", "moray.controlplane.scanner.cli", *argv,
                            "-q"], capture_output=True, text=True, check=True)
    assert quiet.stderr == "" and "path-traversal" in quiet.stdout
    assert main(argv) == 0
    assert "hostile layer entry refused" in caplog.text
