"""Import of the real advisories in shared/advisories and matching against them."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import yaml

from moray.controlplane.scanner.engine.model import (
    Ecosystem,
    OSRelease,
    Package,
    Severity,
    VulnFinding,
)
from moray.controlplane.store.scanstore import ScanStore
from moray.controlplane.vulndb.importer import import_path
from moray.controlplane.vulndb.matcher import Matcher

BOOKWORM = OSRelease("debian", "12", "bookworm")
BULLSEYE = OSRelease("debian", "11", "bullseye")
BUSTER = OSRelease("debian", "10", "buster")
ALPINE318 = OSRelease("alpine", "3.18")


def _pkg(eco: Ecosystem, name: str, version: str, source: str = "",
         namespace: str = "") -> Package:
    return Package(eco, name, version, "/x", "sha256:l", source_name=source or name,
                   source_version=version if eco in ("deb", "apk") else "", namespace=namespace)


def _ids(findings: list[VulnFinding]) -> dict[str, str]:
    return {f.id: f.fixed_version for f in findings}


def test_import_counts_and_is_idempotent(store: ScanStore, advisories: Path) -> None:
    first = import_path(advisories, store)
    assert first.skipped == 0, first.errors
    assert first.by_format == {"osv": 24, "debian-tracker": 5, "alpine-secdb": 2, "nvd": 7}
    rows = store.status()["affected_rows"]
    second = import_path(advisories, store)
    assert store.status()["affected_rows"] == rows
    assert store.generation() == 2
    assert second.records == first.records


def test_pypi(loaded_store: ScanStore) -> None:
    m = Matcher(loaded_store)
    got = _ids(m.match([_pkg(Ecosystem.PYPI, "requests", "2.19.0")], None))
    assert got == {"CVE-2018-18074": "2.20.0", "CVE-2023-32681": "2.31.0"}
    urllib3 = _ids(m.match([_pkg(Ecosystem.PYPI, "urllib3", "1.26.5")], None))
    assert urllib3 == {"CVE-2023-43804": "1.26.17"}
    assert _ids(m.match([_pkg(Ecosystem.PYPI, "urllib3", "2.0.3")], None)) == {
        "CVE-2023-43804": "2.0.6"}
    assert _ids(m.match([_pkg(Ecosystem.PYPI, "urllib3", "1.26.2")], None)).keys() == {
        "CVE-2023-43804", "CVE-2021-28363"}
    jinja = m.match([_pkg(Ecosystem.PYPI, "Jinja2", "2.10")], None)
    assert _ids(jinja) == {"CVE-2019-10906": "2.10.1", "CVE-2020-28493": "2.11.3",
                           "CVE-2024-22195": "3.1.3"}
    ghsa = next(f for f in jinja if f.id == "CVE-2024-22195")
    assert ghsa.severity is Severity.MEDIUM and "GHSA-h5c8-rqwp-cp95" in ghsa.aliases
    assert _ids(m.match([_pkg(Ecosystem.PYPI, "PyYAML", "5.3")], None)).keys() == {
        "CVE-2020-1747", "CVE-2020-14343"}
    assert _ids(m.match([_pkg(Ecosystem.PYPI, "django", "4.2.15")], None)) == {
        "CVE-2024-45230": "4.2.16"}
    assert m.match([_pkg(Ecosystem.PYPI, "django", "5.1.1")], None) == []


def test_npm(loaded_store: ScanStore) -> None:
    m = Matcher(loaded_store)
    old = m.match([_pkg(Ecosystem.NPM, "lodash", "4.17.15")], None)
    assert _ids(old) == {"CVE-2020-8203": "4.17.20", "CVE-2021-23337": "4.17.21"}
    assert all(f.severity is Severity.HIGH for f in old)
    assert _ids(m.match([_pkg(Ecosystem.NPM, "lodash", "4.17.20")], None)) == {
        "CVE-2021-23337": "4.17.21"}
    assert m.match([_pkg(Ecosystem.NPM, "lodash", "4.17.21")], None) == []


def test_go(loaded_store: ScanStore) -> None:
    m = Matcher(loaded_store)
    net = _ids(m.match([_pkg(Ecosystem.GOLANG, "golang.org/x/net", "v0.7.0")], None))
    assert net == {"CVE-2023-39325": "0.17.0", "CVE-2023-45288": "0.23.0"}
    std = _ids(m.match([_pkg(Ecosystem.GOLANG, "stdlib", "1.19.8")], None))
    assert std == {"CVE-2023-39325": "1.20.10", "CVE-2023-45288": "1.21.9"}
    assert _ids(m.match([_pkg(Ecosystem.GOLANG, "stdlib", "1.21.5")], None)) == {
        "CVE-2023-45288": "1.21.9"}
    assert _ids(m.match([_pkg(Ecosystem.GOLANG, "golang.org/x/text", "v0.3.2")], None)) == {
        "CVE-2020-14040": "0.3.3"}
    pseudo = _ids(m.match([_pkg(Ecosystem.GOLANG, "golang.org/x/net",
                                "v0.0.0-20220722155237-a158d28d115b")], None))
    assert "CVE-2022-27664" in pseudo


def test_debian_tracker_release_specific_over_unstable(loaded_store: ScanStore) -> None:
    m = Matcher(loaded_store)
    pkgs = [_pkg(Ecosystem.DEB, "libc6", "2.36-9+deb12u1", "glibc"),
            _pkg(Ecosystem.DEB, "libssl3", "3.0.11-1~deb12u1", "openssl"),
            _pkg(Ecosystem.DEB, "zlib1g", "1:1.2.13.dfsg-1", "zlib")]
    got = m.match(pkgs, BOOKWORM)
    assert {(f.package.name, f.id, f.fixed_version) for f in got} == {
        ("libc6", "CVE-2023-4911", "2.36-9+deb12u3"),
        ("libssl3", "CVE-2023-5363", "3.0.11-1~deb12u2"),
    }
    assert "DSA-5514-1" in next(f for f in got if f.id == "CVE-2023-4911").aliases
    fixed = [_pkg(Ecosystem.DEB, "libc6", "2.36-9+deb12u3", "glibc"),
             _pkg(Ecosystem.DEB, "libssl3", "3.0.11-1~deb12u2", "openssl")]
    assert m.match(fixed, BOOKWORM) == []
    # buster: not-affected for glibc; unixodbc is open (introduced 0, no fix) in Debian:10 OSV
    buster = m.match([_pkg(Ecosystem.DEB, "libc6", "2.28-10", "glibc"),
                      _pkg(Ecosystem.DEB, "unixodbc", "2.3.6-0.1")], BUSTER)
    assert _ids(buster) == {"CVE-2024-1013": ""}
    # bullseye zlib before DSA-5218-1's fix; sid's unstable version older than bookworm's
    assert _ids(m.match([_pkg(Ecosystem.DEB, "zlib1g", "1:1.2.11.dfsg-2+deb11u1", "zlib")],
                        BULLSEYE)) == {"CVE-2022-37434": "1:1.2.11.dfsg-2+deb11u2"}
    # sid-only state applies to a release without its own line (CVE-2023-4911 unfixed)
    trixie = m.match([_pkg(Ecosystem.DEB, "libc6", "2.37-12", "glibc")],
                     OSRelease("debian", "13", "trixie"))
    assert _ids(trixie) == {"CVE-2023-4911": ""}


def test_alpine_secdb_and_osv(loaded_store: ScanStore) -> None:
    m = Matcher(loaded_store)
    got = m.match([_pkg(Ecosystem.APK, "libssl3", "3.1.2-r0", "openssl"),
                   _pkg(Ecosystem.APK, "busybox", "1.36.1-r2")], ALPINE318)
    ids = {(f.package.name, f.id): f.fixed_version for f in got}
    assert ids[("busybox", "CVE-2023-42366")] == "1.36.1-r6"
    assert ids[("busybox", "CVE-2023-42363")] == "1.36.1-r7"
    assert ("busybox", "CVE-2022-48174") not in ids  # fixed in 1.36.1-r1
    assert ("busybox", "CVE-2021-42373") not in ids  # "0": never affected in v3.18
    assert ("libssl3", "CVE-2023-4807") not in ids
    assert ids[("libssl3", "CVE-2023-5363")] == "3.1.4-r0"
    assert m.match([_pkg(Ecosystem.APK, "busybox", "1.36.1-r2")],
                   OSRelease("alpine", "3.17")) == []
    maria = m.match([_pkg(Ecosystem.APK, "mariadb", "10.6.7-r0")], OSRelease("alpine", "3.16"))
    assert _ids(maria) == {"CVE-2022-27449": "10.6.8-r0"}


def test_withdrawn_and_bad_files(store: ScanStore, tmp_path: Path) -> None:
    (tmp_path / "w.json").write_text(json.dumps(
        {"id": "X-1", "modified": "2024", "withdrawn": "2024",
         "affected": [{"package": {"ecosystem": "PyPI", "name": "a"},
                       "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]}))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    report = import_path(tmp_path, store)
    assert report.skipped == 2 and len(report.errors) == 2
    assert Matcher(store).match([_pkg(Ecosystem.PYPI, "a", "1.0")], None) == []


def test_severity_from_an_alias_record(store: ScanStore, tmp_path: Path) -> None:
    osv = {"id": "GHSA-xxxx-yyyy-zzzz", "modified": "2024", "aliases": ["CVE-2099-0001"],
           "database_specific": {"severity": "CRITICAL"}, "affected": []}
    tracker = {"Header": {"ID": "CVE-2099-0001", "Description": "x"}, "Annotations": [
        {"Type": "package", "Package": "zlib", "Kind": "unfixed"}]}
    (tmp_path / "a.json").write_text(json.dumps(osv))
    (tmp_path / "b.json").write_text(json.dumps(tracker))
    import_path(tmp_path, store)
    (finding,) = Matcher(store).match([_pkg(Ecosystem.DEB, "zlib1g", "1:1.3-1", "zlib")],
                                      BOOKWORM)
    assert finding.id == "CVE-2099-0001" and finding.severity is Severity.CRITICAL


def test_osv_zip_export_and_yaml(store: ScanStore, advisories: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "PyPI-all.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        for name in ("PYSEC-2018-28.json", "PYSEC-2023-74.json"):
            zf.write(advisories / name, name)
    doc = json.loads((advisories / "PYSEC-2020-96.json").read_text())
    (tmp_path / "PYSEC-2020-96.yaml").write_text(yaml.safe_dump(doc))
    report = import_path(tmp_path, store)
    assert (report.records, report.skipped) == (3, 0)
    got = Matcher(store).match([_pkg(Ecosystem.PYPI, "requests", "2.19.0"),
                                _pkg(Ecosystem.PYPI, "PyYAML", "5.3")], None)
    assert {f.id for f in got} == {"CVE-2018-18074", "CVE-2023-32681", "CVE-2020-1747"}


def test_alpine_whole_release_secdb(store: ScanStore, advisories: Path, tmp_path: Path) -> None:
    per_package = json.loads((advisories / "alpine-secdb" / "v3.18-main-busybox.json").read_text())
    whole = {"distroversion": "v3.18", "reponame": "main", "archs": ["x86_64"],
             "packages": [{"pkg": {"name": "busybox", "secfixes": per_package["secfixes"]}}]}
    (tmp_path / "main.json").write_text(json.dumps(whole))
    assert import_path(tmp_path / "main.json", store).by_format == {"alpine-secdb": 1}
    got = _ids(Matcher(store).match([_pkg(Ecosystem.APK, "busybox", "1.36.1-r2")], ALPINE318))
    assert got["CVE-2023-42366"] == "1.36.1-r6" and "CVE-2021-42373" not in got


def test_nvd_severity_when_the_vendor_gives_none(loaded_store: ScanStore) -> None:
    """Alpine secdb and PYSEC carry no severity: NVD's CVSS v3.1 (real records) rates them."""
    m = Matcher(loaded_store)
    got = {f.id: f for f in m.match([_pkg(Ecosystem.APK, "busybox", "1.33.0-r0")], ALPINE318)}
    assert (got["CVE-2021-28831"].severity, got["CVE-2021-28831"].cvss_score) == (
        Severity.HIGH, 7.5)
    assert (got["CVE-2021-42374"].severity, got["CVE-2021-42374"].cvss_score) == (
        Severity.MEDIUM, 5.3)
    assert {got["CVE-2021-28831"].severity_source, got["CVE-2021-42374"].severity_source} == {
        "nvd"}
    (jinja,) = [f for f in m.match([_pkg(Ecosystem.PYPI, "jinja2", "2.10")], None)
                if f.id == "CVE-2019-10906"]
    assert (jinja.severity, jinja.cvss_score, jinja.severity_source) == (
        Severity.HIGH, 8.6, "nvd")
    # a vendor rating stays the vendor's (GHSA's 7.2 for lodash)
    lodash = {f.id: f for f in m.match([_pkg(Ecosystem.NPM, "lodash", "4.17.20")], None)}
    assert lodash["CVE-2021-23337"].severity_source == "osv"
    # every finding of these images has a severity now
    assert all(f.severity is not Severity.UNKNOWN for f in got.values()
               if f.id in ("CVE-2021-28831", "CVE-2021-42374"))


def test_vendor_severity_wins_over_nvd_in_any_import_order(tmp_path: Path,
                                                           advisories: Path) -> None:
    """OSV says LOW, NVD says CRITICAL (real CVE-2021-3711): LOW, whichever came first."""
    vendor = {"id": "VENDOR-1", "modified": "2024", "aliases": ["CVE-2021-3711"],
              "database_specific": {"severity": "LOW"},
              "affected": [{"package": {"ecosystem": "PyPI", "name": "sm2"},
                            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]}
    unrated = {**vendor, "id": "VENDOR-2", "database_specific": {},
               "affected": [{**vendor["affected"][0], "package": {"ecosystem": "PyPI",
                                                                  "name": "other"}}]}
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "vendor.json").write_text(json.dumps([vendor, unrated]))
    nvd = advisories / "nvd" / "CVE-2021-3711.json"
    for order in ([tmp_path / "v", nvd], [nvd, tmp_path / "v"]):
        store = ScanStore(tmp_path / f"{order[0].name}.db")
        for path in order:
            assert import_path(path, store).skipped == 0
        m = Matcher(store)
        (f,) = m.match([_pkg(Ecosystem.PYPI, "sm2", "1.0")], None)
        assert (f.severity, f.severity_source) == (Severity.LOW, "osv"), order
        (g,) = m.match([_pkg(Ecosystem.PYPI, "other", "1.0")], None)
        assert (g.severity, g.cvss_score, g.severity_source) == (Severity.CRITICAL, 9.8, "nvd")
        store.close()


def test_nvd_api_answer_and_rejected(store: ScanStore, advisories: Path, tmp_path: Path
                                     ) -> None:
    """The API's (and the yearly feeds') wrapper is read; a rejected CVE is skipped."""
    record = json.loads((advisories / "nvd" / "CVE-2020-1967.json").read_text())
    rejected = {**record, "id": "CVE-2099-0002", "vulnStatus": "Rejected"}
    (tmp_path / "api.json").write_text(json.dumps({
        "format": "NVD_CVE", "version": "2.0",
        "vulnerabilities": [{"cve": record}, {"cve": rejected}]}))
    report = import_path(tmp_path / "api.json", store)
    assert report.by_format == {"nvd": 2} and report.skipped == 0
    adv = store.advisory("nvd:CVE-2020-1967")
    assert adv is not None and (adv.severity, adv.cvss_score) == ("high", 7.5)
    assert store.advisory("nvd:CVE-2099-0002") is None
