"""Secrets (per layer, also when deleted later), malware (YARA + hashes, EICAR), config."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from moray.controlplane.scanner.engine.config import config_findings, image_config
from moray.controlplane.scanner.engine.malware import MalwareDBError, MalwareScanner
from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.scanner.engine.secrets import SecretScanner, shannon_entropy
from moray.controlplane.scanner.engine.source import ArchiveSource, OCILayoutSource
from tests.fixtures.images import rootfs
from tests.fixtures.images.builder import File, Image

SECRETS = (
    f"aws_access_key_id = {rootfs.AWS_KEY_ID}\n"
    f"aws_secret_access_key = {rootfs.AWS_SECRET}\n"
    "DATABASE_URL=postgres://app:S3cr3tPassw0rd@db.internal:5432/app\n"
    "token: ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8" + "\n"
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----\n"
)


def test_secret_rules_and_masking() -> None:
    found = SecretScanner().scan_file("app/.env", SECRETS.encode(), "sha256:l")
    rules = {f.rule: f for f in found}
    assert set(rules) == {"aws-access-key-id", "aws-secret-access-key", "database-url",
                          "github-token", "private-key"}
    assert rules["aws-access-key-id"].masked == "AKIA" + "*" * 16
    assert rules["database-url"].line == 3
    for f in found:
        assert rootfs.AWS_SECRET not in f.masked and "S3cr3tPassw0rd" not in f.masked


def test_entropy_filters_placeholders() -> None:
    s = SecretScanner()
    assert s.scan_file("a.py", b'password = "changeme_changeme"', "") == []
    assert [f.rule for f in s.scan_file("a.py", b'api_key = "Zx81KqPw0vL3mT9rYb2N"', "")] == [
        "generic-secret"]
    assert shannon_entropy("aaaa") == 0.0
    assert s.scan_file("bin/x", b"\0" + SECRETS.encode(), "") == []


def test_secret_deleted_in_later_layer_is_still_reported(tmp_path: Path) -> None:
    img = Image([{"root/.aws/credentials": SECRETS.encode(), "app/ok.txt": b"hello"},
                 {"root/.aws/.wh.credentials": b""}])
    img.write_oci_layout(tmp_path)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions(secrets=SecretScanner()))
    assert {s.rule for s in result.secrets} >= {"aws-access-key-id", "private-key"}
    assert all(s.deleted_later and s.layer == result.layers[0] for s in result.secrets)


def test_eicar_by_yara_and_hash_and_user_lists(tmp_path: Path) -> None:
    scanner = MalwareScanner()
    got = {f.rule for f in scanner.scan_file("tmp/eicar.com", rootfs.EICAR, "sha256:l")}
    assert got == {"yara:EICAR_Test_File", "sha256:EICAR-Test-File"}
    assert scanner.scan_file("x", b"harmless", "") == []
    bad = b"#!/bin/sh\necho pwned\n"
    (tmp_path / "bad.sha256").write_text(f"# list\n{hashlib.sha256(bad).hexdigest()} dropper\n")
    (tmp_path / "r.yar").write_text('rule Pwned { strings: $a = "pwned" condition: $a }')
    custom = MalwareScanner([tmp_path / "r.yar"], [tmp_path / "bad.sha256"])
    assert {f.rule for f in custom.scan_file("x", bad, "")} == {"sha256:dropper", "yara:Pwned"}
    (tmp_path / "broken.yar").write_text("rule {")
    with pytest.raises(MalwareDBError, match="YARA syntax"):
        MalwareScanner([tmp_path / "broken.yar"])


def test_malware_in_image(tmp_path: Path) -> None:
    Image([{"tmp/eicar.com": rootfs.EICAR}, {"tmp/.wh.eicar.com": b""}]
          ).write_oci_layout(tmp_path)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions(malware=MalwareScanner()))
    assert {m.rule for m in result.malware} == {"yara:EICAR_Test_File", "sha256:EICAR-Test-File"}
    assert all(m.deleted_later for m in result.malware)


def test_malware_only_where_it_can_be(tmp_path: Path) -> None:
    """Executables (exec bit or magic), scripts, start-up files and configs outside package
    trees are scanned; documentation and package sources are not, unless all_files."""
    miner = b'{"url": "stratum+tcp://pool.example:3333", "randomx": {}}'
    elf = b"\x7fELF" + rootfs.EICAR  # an executable by its magic, no exec bit
    Image([{
        "opt/x/run": File(rootfs.EICAR, 0o755), "usr/local/lib/libx": elf,
        "etc/cron.d/job": rootfs.EICAR, "root/.bashrc": rootfs.EICAR,
        "opt/miner/config.json": miner,
        "usr/share/doc/eicar/README": rootfs.EICAR, "srv/data/eicar.txt": rootfs.EICAR,
        "app/node_modules/x/config.json": miner,
    }]).write_oci_layout(tmp_path)
    default = scan_image(OCILayoutSource(tmp_path), ScanOptions(malware=MalwareScanner()))
    assert {m.path for m in default.malware} == {
        "opt/x/run", "usr/local/lib/libx", "etc/cron.d/job", "root/.bashrc",
        "opt/miner/config.json"}
    every = scan_image(OCILayoutSource(tmp_path),
                       ScanOptions(malware=MalwareScanner(all_files=True)))
    assert {m.path for m in every.malware} >= {"usr/share/doc/eicar/README",
                                               "srv/data/eicar.txt",
                                               "app/node_modules/x/config.json"}
    assert MalwareScanner().fingerprint != MalwareScanner(all_files=True).fingerprint
    assert MalwareScanner().rules is MalwareScanner().rules  # compiled once


@pytest.mark.parametrize("compress", [False, True])
def test_large_executable_in_windows(tmp_path: Path, compress: bool) -> None:
    """A file over the window is hashed whole and matched window by window, a string
    across a window boundary included, by positioned reads or from the stream."""
    from moray.controlplane.scanner.engine import malware

    marker = b"MORAY-WINDOW-BOUNDARY-MARKER"
    big = bytearray(b"\x7fELF" + bytes(malware.WINDOW + (1 << 20)))
    big[malware.WINDOW - 10:malware.WINDOW - 10 + len(marker)] = marker
    (tmp_path / "r.yar").write_text(f'rule Boundary {{ strings: $m = "{marker.decode()}" '
                                    "condition: $m }")
    (tmp_path / "h.sha256").write_text(hashlib.sha256(big).hexdigest() + " big-dropper\n")
    Image([{"usr/local/bin/big": File(bytes(big), 0o755)}], compress=compress
          ).write_docker_archive(tmp_path / "img.tar")
    scanner = MalwareScanner([tmp_path / "r.yar"], [tmp_path / "h.sha256"])
    seen: list[int] = []
    whole = scanner.scan_file
    scanner.scan_file = lambda p, d, layer: seen.append(len(d)) or whole(p, d, layer)  # type: ignore
    result = scan_image(ArchiveSource(tmp_path / "img.tar"), ScanOptions(malware=scanner))
    assert {m.rule for m in result.malware} == {"yara:Boundary", "sha256:big-dropper"}
    assert seen == []  # never read whole


@pytest.mark.parametrize("compress", [False, True])
def test_hashed_only_when_it_can_be_listed_or_a_rule_matched(tmp_path: Path,
                                                              compress: bool) -> None:
    """With the built-in hash list (EICAR's 68 bytes) a file of another size cannot be on
    it, so it is hashed only when a rule matches; the finding then has its SHA-256,
    windows and stream alike."""
    from moray.controlplane.scanner.engine import malware

    marker = b"MORAY-HASH-LATE-MARKER"
    hit = bytearray(b"\x7fELF" + bytes(malware.WINDOW * 2))
    hit[-100:-100 + len(marker)] = marker
    (tmp_path / "r.yar").write_text(f'rule Late {{ strings: $m = "{marker.decode()}" '
                                    "condition: $m }")
    Image([{"usr/local/bin/hit": File(bytes(hit), 0o755),
            "usr/local/bin/clean": File(b"\x7fELF" + bytes(malware.WINDOW + 5), 0o755),
            "usr/local/bin/small": File(b"#!/bin/sh\n" + marker + b"\n", 0o755),
            "tmp/eicar.com": rootfs.EICAR}],
          compress=compress).write_docker_archive(tmp_path / "img.tar")
    scanner = MalwareScanner([tmp_path / "r.yar"])
    assert scanner.hash_sizes == {len(rootfs.EICAR)}
    assert MalwareScanner(hash_files=[]).hash_sizes is not None
    result = scan_image(ArchiveSource(tmp_path / "img.tar"), ScanOptions(malware=scanner))
    got = {(m.path, m.rule, m.sha256) for m in result.malware}
    small = b"#!/bin/sh\n" + marker + b"\n"
    assert got == {("usr/local/bin/hit", "yara:Late", hashlib.sha256(hit).hexdigest()),
                   ("usr/local/bin/small", "yara:Late", hashlib.sha256(small).hexdigest()),
                   ("tmp/eicar.com", "yara:EICAR_Test_File", rootfs.EICAR_SHA256),
                   ("tmp/eicar.com", "sha256:EICAR-Test-File", rootfs.EICAR_SHA256)}


def test_builtin_rules_prefilter_changes_nothing() -> None:
    """With the built-in rules only, YARA runs where one of BUILTIN_NEEDS is: the same
    findings as YARA everywhere, on each rule's matches and near misses."""
    filtered, everywhere = MalwareScanner(), MalwareScanner()
    everywhere._needs = None
    assert filtered._needs is not None
    pad = b"X" * 36
    samples = [rootfs.EICAR, rootfs.EICAR + b"\n", pad + rootfs.EICAR[:-1],
               b"#!/bin/sh\n" + rootfs.EICAR, bytes(300) + rootfs.EICAR,
               b'{"url": "stratum+tcp://p:1", "randomx": 1}', b'{"url": "stratum+ssl://p"}',
               b'{"donate-level": 1, "url": "stratum+ssl://p"}', b'{"RandomX": "stratum+tcp"}',
               b"randomx only", b"", b"\x7fELF" + bytes(100)]
    lazy = MalwareScanner()
    assert lazy.scan_file("x", b"\x7fELF" + bytes(100), "l") == []
    assert lazy._rules is None  # nothing needed YARA: not compiled in this scanner
    assert lazy.scan_file("x", rootfs.EICAR, "l") and lazy._rules is not None
    hits = 0
    for data in samples:
        got = filtered.scan_file("x", data, "l")
        assert got == everywhere.scan_file("x", data, "l"), data
        hits += bool(got)
    assert hits == 5


def test_first_bytes_read_only_when_path_and_mode_do_not_decide() -> None:
    from moray.controlplane.scanner.engine.malware import can_carry_malware

    def unread(n: int) -> bytes:
        raise AssertionError("peeked")

    assert not can_carry_malware("usr/lib/python3/site-packages/x/run", 0o755, unread)
    assert can_carry_malware("opt/x/run", 0o755, unread)
    assert can_carry_malware("opt/x/start.sh", 0o644, unread)
    assert can_carry_malware("etc/cron.d/job", 0o644, unread)
    assert can_carry_malware("srv/lib/libx", 0o644, lambda n: b"\x7fELF"[:n])
    assert not can_carry_malware("srv/data/x.txt", 0o644, lambda n: b"hello"[:n])


def test_config_findings() -> None:
    cfg = image_config({"config": {"User": "", "Env": [
        "PATH=/usr/bin", "DB_PASSWORD=hunter2hunter2", "API_TOKEN=", "HOME=/root",
        f"KEY_ID={rootfs.AWS_KEY_ID}"], "ExposedPorts": {"22/tcp": {}}},
        "history": [{"created_by": "RUN curl -sL https://x.example/i.sh | sh"}]})
    found = config_findings(cfg, SecretScanner())
    assert [(f.rule, f.detail) for f in found] == [
        ("CFG001", "no USER set (defaults to root)"),
        ("CFG002", "DB_PASSWORD=hunt**********"),
        ("CFG002", "KEY_ID=AKIA****************"),
        ("CFG003", "22/tcp"),
        ("CFG004", "RUN curl -sL https://x.example/i.sh | sh"),
    ]
    assert config_findings(image_config({"config": {"User": "app"}})) == []
    assert config_findings(image_config({"config": {"User": "0:0"}}))[0].rule == "CFG001"


def test_package_metadata_is_not_scanned_for_secrets() -> None:
    jwt = (b"eyJhbGciOiJIUzI1NiJ9.eyJzb21lIjoicGF5bG9hZCJ9."
           b"4twFt5NiznN84AWoo1d7KO1T_yoc0Z6XOpOVswacPZg")
    s = SecretScanner()
    assert s.scan_file("usr/lib/python3/dist-packages/PyJWT-2.6.0.egg-info/PKG-INFO", jwt, "") == []
    assert [f.rule for f in s.scan_file("app/config.txt", jwt, "")] == ["jwt"]


@pytest.mark.parametrize(("rule", "text"), [
    ("gcp-service-account", '{"type": "service_account", "private_key_id": "'
     + "3f" * 20 + '", "private_key": "..."}'),
    ("azure-storage-key", "DefaultEndpointsProtocol=https;AccountName=x;AccountKey="
     + "Ab3d" * 21 + "xY==;EndpointSuffix=core.windows.net"),
    ("sendgrid-key", "SG." + "aB3dE6gH9jK2mN5pQ8sT1v" + "." + "Xy7" * 14 + "Z"),
    ("huggingface-token", "HF_TOKEN=hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"),
    ("npmrc-auth", "//registry.npmjs.org/:_authToken=npm-secret-value-1234"),
    ("docker-config-auth", '{"auths": {"r.example": {"auth": "dXNlcjpwYXNzd29yZA=="}}}'),
])
def test_more_credential_formats(rule: str, text: str) -> None:
    found = SecretScanner().scan_file("app/conf", text.encode(), "")
    assert rule in {f.rule for f in found}
