"""Ecosystem and package-name keys shared by the importers and the matcher."""

from __future__ import annotations

import re

DEBIAN_CODENAMES = {
    "hamm": "2", "slink": "2.1", "potato": "2.2", "woody": "3.0", "sarge": "3.1", "etch": "4",
    "lenny": "5", "squeeze": "6", "wheezy": "7", "jessie": "8", "stretch": "9", "buster": "10",
    "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14",
}

# OSV ecosystem name -> our ecosystem key (the purl type)
OSV_ECOSYSTEMS = {
    "pypi": "pypi", "npm": "npm", "go": "golang", "maven": "maven", "crates.io": "cargo",
    "debian": "deb", "ubuntu": "deb", "alpine": "apk", "red hat": "rpm", "rocky linux": "rpm",
    "almalinux": "rpm", "suse": "rpm", "opensuse": "rpm",
}
OS_DISTROS = {"debian", "ubuntu", "alpine", "red hat", "rocky linux", "almalinux", "suse",
              "opensuse"}
_DISTRO_KEYS = {"red hat": "rhel", "rocky linux": "rocky", "almalinux": "almalinux"}


def osv_ecosystem(name: str) -> tuple[str, str] | None:
    """OSV ``Debian:12`` -> ("deb", "debian:12"); ``PyPI`` -> ("pypi", ""); unknown -> None."""
    base, _, release = name.partition(":")
    key = base.strip().lower()
    eco = OSV_ECOSYSTEMS.get(key)
    if eco is None:
        return None
    if key not in OS_DISTROS:
        return eco, ""
    return eco, release_key(_DISTRO_KEYS.get(key, key), release)


def release_key(distro: str, version: str) -> str:
    """A distro release as stored: "debian:12", "alpine:3.18", "ubuntu:22.04"."""
    v = version.strip().lower().removeprefix("v")
    if distro == "debian":
        v = DEBIAN_CODENAMES.get(v, v).split(".")[0]
    elif distro == "alpine":
        v = ".".join(v.split(".")[:2])
    elif distro in ("rhel", "rocky", "almalinux", "centos"):
        m = re.search(r"\d+", v)  # "8.9", OSV "Red Hat:enterprise_linux:8::appstream"
        v = m.group(0) if m else v
    elif distro == "ubuntu":
        m = re.search(r"\d+\.\d+", v)  # OSV "Ubuntu:22.04:LTS", "Ubuntu:Pro:18.04:LTS"
        v = m.group(0) if m else v
    return f"{distro}:{v}"


def package_key(ecosystem: str, name: str, namespace: str = "") -> str:
    if ecosystem == "pypi":
        return re.sub(r"[-_.]+", "-", name).lower()
    if ecosystem == "npm" and namespace:
        return f"{namespace}/{name}"
    if ecosystem == "maven" and namespace:
        return f"{namespace}:{name}"
    return name


NVD_PREFIX = "nvd:"


def nvd_id(cve: str) -> str:
    """The advisory id NVD's record of ``cve`` is stored under (severity only)."""
    return NVD_PREFIX + cve
