"""Version order per ecosystem, through univers, and OSV range evaluation."""

from __future__ import annotations

import pytest

from moray.controlplane.vulndb.names import osv_ecosystem, release_key
from moray.controlplane.vulndb.versions import compare, first_fixed, is_affected

LESS = [
    ("deb", "1:1.0-1", "2:0.1-1"),  # epoch wins
    ("deb", "1.2.13.dfsg-1", "1:1.2.11.dfsg-4.1"),  # no epoch = 0
    ("deb", "3.0.11-1~deb12u1", "3.0.11-1~deb12u2"),
    ("deb", "1.0~rc1-1", "1.0-1"),  # tilde sorts before anything
    ("deb", "2.36-9+deb12u1", "2.36-9+deb12u3"),
    ("rpm", "1.0-1.el8", "1:0.9-1.el8"),
    ("rpm", "3.0.7-24.el9", "3.0.7-25.el9"),
    ("apk", "1.36.1-r2", "1.36.1-r6"),
    ("apk", "1.1.1l-r0", "3.0.1-r0"),
    ("apk", "1.36.1-r9", "1.36.1-r10"),
    ("pypi", "1.0rc1", "1.0"),
    ("pypi", "1.0", "1.0.post1"),
    ("pypi", "1.26.17", "2.0.0"),
    ("pypi", "2.9", "2.10"),
    ("npm", "4.17.20", "4.17.21"),
    ("npm", "1.0.0-beta.2", "1.0.0"),
    ("golang", "v0.0.0-20220906165146-f3363e06e74c", "v0.7.0"),
    ("golang", "1.19.0-0", "1.19.0"),
    ("golang", "1.20.10", "1.21.0-0"),
    ("maven", "2.14.0-rc1", "2.14.0"),
    ("maven", "1.9", "1.10"),
    ("cargo", "1.6.0", "1.6.1"),
]


@pytest.mark.parametrize(("eco", "a", "b"), LESS)
def test_order(eco: str, a: str, b: str) -> None:
    assert compare(eco, a, b) == -1
    assert compare(eco, b, a) == 1


def test_equal_and_unparsable() -> None:
    assert compare("pypi", "1.0", "1.0.0") == 0
    with pytest.raises(ValueError, match="cannot compare"):
        compare("deb", "", "1.0")


def _r(*events: dict[str, str], kind: str = "ECOSYSTEM") -> dict[str, object]:
    return {"type": kind, "events": list(events)}


def test_unsorted_events_are_sorted_first() -> None:
    # PYSEC-2023-192 lists its 2.x range before the 1.x one
    ranges = [_r({"introduced": "2.0.0"}, {"fixed": "2.0.6"}, {"introduced": "0"},
                 {"fixed": "1.26.17"})]
    assert is_affected("pypi", "1.26.5", ranges, [])
    assert not is_affected("pypi", "1.26.17", ranges, [])
    assert is_affected("pypi", "2.0.3", ranges, [])
    assert not is_affected("pypi", "2.1.0", ranges, [])
    assert first_fixed("pypi", "1.26.5", ranges) == "1.26.17"
    assert first_fixed("pypi", "2.0.3", ranges) == "2.0.6"


def test_last_affected_and_open_ranges() -> None:
    ranges = [_r({"introduced": "1.0"}, {"last_affected": "1.4"})]
    assert is_affected("pypi", "1.4", ranges, [])
    assert not is_affected("pypi", "1.4.1", ranges, [])
    assert not is_affected("pypi", "0.9", ranges, [])
    assert is_affected("deb", "9:9.9-9", [_r({"introduced": "0"})], [])


def test_git_ranges_are_ignored_but_versions_lists_count() -> None:
    git = [_r({"introduced": "0"}, {"fixed": "c45d7c49ea75133e52ab22a8e9e13173938e36ff"},
              kind="GIT")]
    assert not is_affected("pypi", "2.19.0", git, [])
    assert is_affected("pypi", "2.19.0", git, ["2.18.0", "2.19.0"])
    assert is_affected("golang", "v1.2.3", [], ["1.2.3"])


def test_release_keys() -> None:
    assert osv_ecosystem("Debian:12") == ("deb", "debian:12")
    assert osv_ecosystem("Alpine:v3.18") == ("apk", "alpine:3.18")
    assert osv_ecosystem("Ubuntu:22.04:LTS") == ("deb", "ubuntu:22.04")
    assert osv_ecosystem("Rocky Linux:8") == ("rpm", "rocky:8")
    assert osv_ecosystem("Red Hat:enterprise_linux:8::appstream") == ("rpm", "rhel:8")
    assert release_key("rhel", "8.9") == "rhel:8"
    assert osv_ecosystem("crates.io") == ("cargo", "")
    assert osv_ecosystem("Hackage") is None
    assert release_key("debian", "bookworm") == "debian:12"
    assert release_key("alpine", "3.18.4") == "alpine:3.18"
