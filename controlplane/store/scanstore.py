"""SQLite tables for vulnerability data, the per-layer scan cache and assurance verdicts.

Data owned here and when it changes:
- ``vuln_advisory`` / ``vuln_affected``: replaced per (source, origin record) on every
  import; each import that adds records bumps ``scanstore_meta.vulndb_generation``,
  which marks stored verdicts stale.
- ``scan_layer_cache``: written once per (layer digest, analyzer version); layers are
  content-addressed, so entries never go stale, only unused.
- ``image_verdict``: one row per (image digest, policy), overwritten by each evaluation.
- ``scan_job``: queued by ``enqueue_scan`` (or ``enqueue_stale`` after a vulndb import),
  leased to one worker at a time by ``claim_scan`` (an expired lease is claimable again),
  closed by ``finish_scan``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "/var/lib/moray"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS scanstore_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vuln_advisory (
    id TEXT PRIMARY KEY, aliases TEXT NOT NULL, summary TEXT NOT NULL,
    severity TEXT NOT NULL, cvss_score REAL, modified TEXT NOT NULL, sources TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vuln_alias (
    alias TEXT NOT NULL, advisory_id TEXT NOT NULL, PRIMARY KEY (alias, advisory_id)
);
CREATE TABLE IF NOT EXISTS vuln_affected (
    advisory_id TEXT NOT NULL, source TEXT NOT NULL, origin TEXT NOT NULL,
    ecosystem TEXT NOT NULL, release TEXT NOT NULL, package TEXT NOT NULL,
    status TEXT NOT NULL, ranges TEXT NOT NULL, versions TEXT NOT NULL, fixed TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS vuln_affected_pkg ON vuln_affected (ecosystem, package);
CREATE INDEX IF NOT EXISTS vuln_affected_origin ON vuln_affected (source, origin);
CREATE TABLE IF NOT EXISTS vuln_import (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, records INTEGER NOT NULL,
    rows INTEGER NOT NULL, skipped INTEGER NOT NULL, imported_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scan_layer_cache (
    digest TEXT NOT NULL, version TEXT NOT NULL, result TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (digest, version)
);
CREATE TABLE IF NOT EXISTS scan_job (
    id INTEGER PRIMARY KEY AUTOINCREMENT, image TEXT NOT NULL, policy TEXT NOT NULL,
    status TEXT NOT NULL, worker TEXT NOT NULL DEFAULT '', lease_until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, digest TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scan_job_status ON scan_job (status, lease_until);
CREATE TABLE IF NOT EXISTS image_verdict (
    image_digest TEXT NOT NULL, policy TEXT NOT NULL, passed INTEGER NOT NULL,
    reasons TEXT NOT NULL, vulndb_generation INTEGER NOT NULL, image TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (image_digest, policy)
);
"""


def data_dir() -> Path:
    return Path(os.environ.get("MORAY_DATA_DIR", DEFAULT_DATA_DIR))


def default_db_path() -> Path:
    return data_dir() / "moray.db"


@dataclass(frozen=True, slots=True)
class AffectedRecord:
    advisory_id: str
    source: str
    origin: str  # the record the row came from (DSA id, secdb file), for replacement
    ecosystem: str
    release: str  # "" for language ecosystems, "debian:12", "debian:" = every release
    package: str
    status: str  # "affected" | "not_affected"
    ranges: list[dict[str, Any]]
    versions: list[str]
    fixed: str


@dataclass(frozen=True, slots=True)
class AdvisoryRecord:
    id: str
    aliases: list[str]
    summary: str
    severity: str
    cvss_score: float | None
    modified: str
    source: str


@dataclass(frozen=True, slots=True)
class ScanJob:
    id: int
    image: str
    policy: str  # policy document (YAML text), "" for none
    attempts: int


@dataclass(frozen=True, slots=True)
class Verdict:
    image_digest: str
    policy: str
    passed: bool
    reasons: list[str]
    vulndb_generation: int
    image: str
    created: float


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return wrapper


class ScanStore:
    def __init__(self, path: Path | str, clock: Any = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # one connection shared by threads (a web server's pool), serialised by _lock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO scanstore_meta VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))

    @_locked
    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- vulnerability data --------------------------------------------------------------

    @_locked
    def replace_origin(self, source: str, origin: str, advisories: Iterable[AdvisoryRecord],
                       rows: Iterable[AffectedRecord]) -> int:
        """Replace everything one source record contributed; call inside transaction()."""
        self._db.execute("DELETE FROM vuln_affected WHERE source = ? AND origin = ?",
                         (source, origin))
        for adv in advisories:
            self._upsert_advisory(adv)
        n = 0
        for r in rows:
            self._db.execute(
                "INSERT INTO vuln_affected VALUES (?,?,?,?,?,?,?,?,?,?)",
                (r.advisory_id, r.source, r.origin, r.ecosystem, r.release, r.package, r.status,
                 json.dumps(r.ranges), json.dumps(r.versions), r.fixed),
            )
            n += 1
        return n

    def _upsert_advisory(self, adv: AdvisoryRecord) -> None:
        old = self._db.execute("SELECT aliases, summary, severity, cvss_score, sources "
                               "FROM vuln_advisory WHERE id = ?", (adv.id,)).fetchone()
        aliases, summary, severity, score, sources = (
            set(adv.aliases), adv.summary, adv.severity, adv.cvss_score, {adv.source})
        if old:
            aliases |= set(json.loads(old[0]))
            summary = summary or old[1]
            if severity == "unknown":
                severity = old[2]
            score = score if score is not None else old[3]
            sources |= set(json.loads(old[4]))
        aliases.discard(adv.id)
        self._db.executemany("INSERT OR IGNORE INTO vuln_alias VALUES (?, ?)",
                             [(a, adv.id) for a in aliases])
        self._db.execute(
            "INSERT OR REPLACE INTO vuln_advisory VALUES (?,?,?,?,?,?,?)",
            (adv.id, json.dumps(sorted(aliases)), summary, severity, score, adv.modified,
             json.dumps(sorted(sources))),
        )

    @_locked
    def record_import(self, path: str, records: int, rows: int, skipped: int) -> None:
        self._db.execute("INSERT INTO vuln_import (path, records, rows, skipped, imported_at) "
                         "VALUES (?,?,?,?,?)", (path, records, rows, skipped, self._clock()))
        if records:
            self._db.execute(
                "INSERT INTO scanstore_meta VALUES ('vulndb_generation', '1') "
                "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    @_locked
    def affected_for(self, ecosystem: str, packages: Iterable[str]) -> list[AffectedRecord]:
        names = sorted(set(packages))
        if not names:
            return []
        marks = ",".join("?" * len(names))
        cur = self._db.execute(
            f"SELECT advisory_id, source, origin, ecosystem, release, package, status, ranges, "
            f"versions, fixed FROM vuln_affected WHERE ecosystem = ? AND package IN ({marks})",
            (ecosystem, *names))
        return [AffectedRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]),
                               json.loads(r[8]), r[9]) for r in cur]

    @_locked
    def advisory(self, advisory_id: str) -> AdvisoryRecord | None:
        r = self._db.execute("SELECT id, aliases, summary, severity, cvss_score, modified, "
                             "sources FROM vuln_advisory WHERE id = ?", (advisory_id,)).fetchone()
        if r is None:
            return None
        return AdvisoryRecord(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5],
                              ",".join(json.loads(r[6])))

    @_locked
    def related_ids(self, advisory_id: str) -> list[str]:
        """Ids linked to ``advisory_id`` by an alias, in either direction."""
        cur = self._db.execute(
            "SELECT advisory_id FROM vuln_alias WHERE alias = ? UNION "
            "SELECT alias FROM vuln_alias WHERE advisory_id = ?", (advisory_id, advisory_id))
        return sorted(r[0] for r in cur)

    @_locked
    def generation(self) -> int:
        r = self._db.execute(
            "SELECT value FROM scanstore_meta WHERE key = 'vulndb_generation'").fetchone()
        return int(r[0]) if r else 0

    @_locked
    def status(self) -> dict[str, Any]:
        q = self._db.execute
        per_eco = dict(q("SELECT ecosystem || CASE WHEN release != '' THEN ' ' || release "
                         "ELSE '' END, COUNT(DISTINCT advisory_id) FROM vuln_affected "
                         "GROUP BY 1 ORDER BY 1").fetchall())
        last = q("SELECT path, imported_at FROM vuln_import ORDER BY id DESC LIMIT 1").fetchone()
        return {
            "path": str(self.path),
            "advisories": q("SELECT COUNT(*) FROM vuln_advisory").fetchone()[0],
            "affected_rows": q("SELECT COUNT(*) FROM vuln_affected").fetchone()[0],
            "by_ecosystem": per_eco,
            "generation": self.generation(),
            "last_import": {"path": last[0], "at": last[1]} if last else None,
            "cached_layers": q("SELECT COUNT(*) FROM scan_layer_cache").fetchone()[0],
            "verdicts": q("SELECT COUNT(*) FROM image_verdict").fetchone()[0],
        }

    # -- scan cache ----------------------------------------------------------------------

    @_locked
    def get_layer_json(self, digest: str, version: str) -> dict[str, Any] | None:
        r = self._db.execute("SELECT result FROM scan_layer_cache WHERE digest = ? AND "
                             "version = ?", (digest, version)).fetchone()
        return json.loads(r[0]) if r else None

    @_locked
    def put_layer_json(self, digest: str, version: str, result: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO scan_layer_cache VALUES (?,?,?,?)",
                         (digest, version, json.dumps(result), self._clock()))

    # -- verdicts ------------------------------------------------------------------------

    @_locked
    def put_verdict(self, v: Verdict) -> None:
        self._db.execute("INSERT OR REPLACE INTO image_verdict VALUES (?,?,?,?,?,?,?)",
                         (v.image_digest, v.policy, int(v.passed), json.dumps(v.reasons),
                          v.vulndb_generation, v.image, v.created))

    @_locked
    def record_verdict(self, image_digest: str, image: str, policy: str, passed: bool,
                       reasons: list[str]) -> Verdict:
        """Store a verdict stamped with the current vulndb generation and time."""
        verdict = Verdict(image_digest, policy, passed, reasons, self.generation(), image,
                          self._clock())
        self.put_verdict(verdict)
        return verdict

    @_locked
    def verdicts(self, image_digest: str) -> list[Verdict]:
        cur = self._db.execute("SELECT image_digest, policy, passed, reasons, vulndb_generation,"
                               " image, created FROM image_verdict WHERE image_digest = ? "
                               "ORDER BY policy", (image_digest,))
        return [Verdict(r[0], r[1], bool(r[2]), json.loads(r[3]), r[4], r[5], r[6]) for r in cur]

    # -- scan jobs -----------------------------------------------------------------------

    @_locked
    def enqueue_scan(self, image: str, policy: str = "") -> int:
        """Queue a scan unless the same image is already queued or running."""
        with self.transaction():
            row = self._db.execute("SELECT id FROM scan_job WHERE image = ? AND policy = ? AND "
                                   "status IN ('queued', 'running')", (image, policy)).fetchone()
            if row:
                return int(row[0])
            now = self._clock()
            cur = self._db.execute("INSERT INTO scan_job (image, policy, status, created, updated)"
                                   " VALUES (?, ?, 'queued', ?, ?)", (image, policy, now, now))
            return int(cur.lastrowid or 0)

    @_locked
    def claim_scan(self, worker: str, lease_seconds: float = 600.0,
                   max_attempts: int = 3) -> ScanJob | None:
        """Lease the oldest claimable job to ``worker``; atomic across processes."""
        now = self._clock()
        row = self._db.execute(
            "UPDATE scan_job SET status = 'running', worker = ?, lease_until = ?, "
            "attempts = attempts + 1, updated = ? WHERE id = (SELECT id FROM scan_job WHERE "
            "(status = 'queued' OR (status = 'running' AND lease_until < ?)) AND attempts < ? "
            "ORDER BY id LIMIT 1) RETURNING id, image, policy, attempts",
            (worker, now + lease_seconds, now, now, max_attempts)).fetchone()
        return ScanJob(int(row[0]), row[1], row[2], int(row[3])) if row else None

    @_locked
    def finish_scan(self, job_id: int, worker: str, *, digest: str = "",
                    error: str = "") -> bool:
        """Close a job this worker holds; False when the lease was lost to another worker."""
        cur = self._db.execute(
            "UPDATE scan_job SET status = ?, digest = ?, error = ?, updated = ? "
            "WHERE id = ? AND worker = ? AND status = 'running'",
            ("failed" if error else "done", digest, error[:2000], self._clock(), job_id, worker))
        return cur.rowcount == 1

    @_locked
    def jobs(self) -> list[dict[str, Any]]:
        cur = self._db.execute("SELECT id, image, status, worker, attempts, digest, error "
                               "FROM scan_job ORDER BY id")
        keys = ("id", "image", "status", "worker", "attempts", "digest", "error")
        return [dict(zip(keys, r, strict=True)) for r in cur]

    @_locked
    def enqueue_stale(self) -> int:
        """Queue a rescan of every image whose verdict predates the current vulndb data."""
        gen = self.generation()
        stale = self._db.execute(
            "SELECT DISTINCT v.image, COALESCE((SELECT j.policy FROM scan_job j WHERE "
            "j.image = v.image ORDER BY j.id DESC LIMIT 1), '') FROM image_verdict v "
            "WHERE v.vulndb_generation < ?", (gen,)).fetchall()
        for image, policy in stale:
            self.enqueue_scan(image, policy)
        return len(stale)
