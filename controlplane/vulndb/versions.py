"""Version order per ecosystem (univers) and OSV range evaluation.

``is_affected`` follows the OSV schema's evaluation: events of each ECOSYSTEM / SEMVER
range are sorted by version (``introduced: "0"`` first) and walked; ``fixed`` ends an
affected run at that version, ``last_affected`` just after it; a ``versions`` list is
matched exactly. GIT ranges carry commit hashes and are ignored.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from typing import Any

from univers import versions as uv

log = logging.getLogger(__name__)

VERSION_CLASSES: dict[str, type[uv.Version]] = {
    "deb": uv.DebianVersion,
    "apk": uv.AlpineLinuxVersion,
    "rpm": uv.RpmVersion,
    "pypi": uv.PypiVersion,
    "npm": uv.SemverVersion,
    "golang": uv.GolangVersion,
    "maven": uv.MavenVersion,
    "cargo": uv.SemverVersion,
}

COMPARABLE_RANGES = ("ECOSYSTEM", "SEMVER")


def normalise_version(ecosystem: str, version: str) -> str:
    v = version.strip()
    if ecosystem in ("golang", "npm", "cargo"):
        v = v.removeprefix("v")
    if ecosystem == "golang" and v.startswith("go"):
        v = v[2:]
    return v


@functools.lru_cache(maxsize=65536)
def parse_version(ecosystem: str, version: str) -> uv.Version | None:
    cls = VERSION_CLASSES.get(ecosystem)
    if cls is None:
        return None
    try:
        return cls(normalise_version(ecosystem, version))
    except Exception as err:
        log.debug("unparsable version", extra={"ecosystem": ecosystem, "version": version,
                                               "error": str(err)})
        return None


def compare(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1; raises ValueError when either version cannot be parsed."""
    va, vb = parse_version(ecosystem, a), parse_version(ecosystem, b)
    if va is None or vb is None:
        raise ValueError(f"cannot compare {a!r} and {b!r} as {ecosystem} versions")
    return (va > vb) - (va < vb)


_ZERO = re.compile(r"^0+$")


def _event_key(ecosystem: str, event: dict[str, str]) -> tuple[int, Any]:
    (kind, value), = event.items()
    if kind == "introduced" and _ZERO.match(value):
        return (0, None)
    parsed = parse_version(ecosystem, value)
    return (1, parsed)


def range_affects(ecosystem: str, version: str, events: Sequence[dict[str, str]]) -> bool:
    v = parse_version(ecosystem, version)
    if v is None:
        return False
    usable = [
        {k: str(val)} for e in events for k, val in e.items()
        if k in ("introduced", "fixed", "last_affected")
    ]
    keyed = []
    for e in usable:
        key = _event_key(ecosystem, e)
        if key[0] == 1 and key[1] is None:
            log.debug("skipping unparsable range event", extra={"event": e})
            continue
        keyed.append((key, e))
    _sort_events(keyed)
    affected = False
    for (rank, ev_version), e in keyed:
        (kind, _), = e.items()
        if kind == "introduced":
            if rank == 0 or v >= ev_version:
                affected = True
        elif kind == "fixed":
            if v >= ev_version:
                affected = False
        elif kind == "last_affected" and v > ev_version:
            affected = False
    return affected


def _sort_events(keyed: list[tuple[tuple[int, Any], dict[str, str]]]) -> None:
    def cmp(a: tuple[tuple[int, Any], dict[str, str]],
            b: tuple[tuple[int, Any], dict[str, str]]) -> int:
        (ra, va), (rb, vb) = a[0], b[0]
        if ra != rb:
            return ra - rb
        if ra == 0:
            return 0
        return int(va > vb) - int(va < vb)

    keyed.sort(key=functools.cmp_to_key(cmp))


def is_affected(ecosystem: str, version: str, ranges: Sequence[dict[str, Any]],
                versions: Sequence[str]) -> bool:
    """Whether ``version`` is affected by an OSV ``affected`` entry's ranges and versions."""
    if version in versions or normalise_version(ecosystem, version) in {
        normalise_version(ecosystem, x) for x in versions
    }:
        return True
    for r in ranges:
        if r.get("type") in COMPARABLE_RANGES and range_affects(ecosystem, version,
                                                               r.get("events", [])):
            return True
    return False


def first_fixed(ecosystem: str, version: str, ranges: Sequence[dict[str, Any]]) -> str:
    """The lowest ``fixed`` version above ``version`` (what to upgrade to), or ''."""
    v = parse_version(ecosystem, version)
    best: tuple[Any, str] | None = None
    for r in ranges:
        if r.get("type") not in COMPARABLE_RANGES:
            continue
        for e in r.get("events", []):
            fixed = e.get("fixed")
            pv = parse_version(ecosystem, fixed) if fixed else None
            if pv is None or (v is not None and pv <= v):
                continue
            if best is None or pv < best[0]:
                best = (pv, fixed)
    return best[1] if best else ""
