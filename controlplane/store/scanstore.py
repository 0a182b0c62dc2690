"""The scanner's data: vulnerability knowledge base, per-layer scan cache, scan jobs,
assurance verdicts, and the registries and images the server scans on a schedule.

The tables are ``controlplane/store/scanmodels.py``, created and changed by the alembic
migrations; they live in the control plane's database (the SQLite file
``$MORAY_DATA_DIR/moray.db`` or PostgreSQL), so ``moray-server`` and the CLI on the
server's host see the same data. Data owned here and when it changes:

- ``vuln_advisory`` / ``vuln_affected``: replaced per (source, origin record) on every
  import; each import that adds records bumps ``scanstore_meta.vulndb_generation``,
  which marks stored verdicts stale.
- ``scan_layer_cache``: written once per (layer digest, analyzer version); layers are
  content-addressed, so entries never go stale, only unused.
- ``image_verdict``: one row per (image digest, policy), overwritten by each evaluation,
  stamped with the generation of the data it was matched against.
- ``scan_job``: queued by ``enqueue_scan`` (by a person, the scheduler, or
  ``enqueue_stale`` after a vulndb import); a second enqueue of a job that is queued or
  leased returns the existing one (a partial unique index on ``job_key``); leased to one
  worker at a time by ``claim_scan`` (an expired lease is claimable again, up to
  ``max_attempts``; then the job fails), kept by ``extend_scan``, given back by
  ``release_scan``, closed by ``finish_scan``.
- ``scan_registry`` / ``scan_image``: registered by ``add_registry`` / ``add_image``,
  removed by ``remove_*``; ``next_run`` is moved by the scheduler each time it lists
  (``claim_due``), so two server replicas never list the same registry twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, bindparam, text

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "/var/lib/moray"


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
    insecure: bool = False  # plain HTTP to a loopback registry
    credentials: str = ""   # a reference the worker resolves (controlplane.scanner.credentials)


@dataclass(frozen=True, slots=True)
class Verdict:
    image_digest: str
    policy: str
    passed: bool
    reasons: list[str]
    vulndb_generation: int
    image: str
    created: float


@dataclass(frozen=True, slots=True)
class RegisteredRegistry:
    id: int
    registry: str          # host[:port]
    repositories: list[str]  # [] = every repository in the catalog
    credentials: str
    insecure: bool
    interval_seconds: float
    policy: str
    next_run: float
    last_run: float | None = None
    last_images: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "registry": self.registry, "repositories": self.repositories,
                "credentials": self.credentials, "insecure": self.insecure,
                "interval_seconds": self.interval_seconds, "has_policy": bool(self.policy),
                "next_run": self.next_run, "last_run": self.last_run,
                "last_images": self.last_images, "last_error": self.last_error}


@dataclass(frozen=True, slots=True)
class RegisteredImage:
    id: int
    image: str
    credentials: str
    insecure: bool
    interval_seconds: float
    policy: str
    next_run: float
    last_run: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image, "credentials": self.credentials,
                "insecure": self.insecure, "interval_seconds": self.interval_seconds,
                "has_policy": bool(self.policy), "next_run": self.next_run,
                "last_run": self.last_run}


def job_key(image: str, policy: str, insecure: bool, credentials: str) -> str:
    """What makes two jobs the same job (at most one of them queued or leased)."""
    raw = "\0".join((image, policy, "1" if insecure else "0", credentials))
    return hashlib.sha256(raw.encode()).hexdigest()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return wrapper


def open_engine(location: Path | str) -> Engine:
    """An engine for a SQLAlchemy URL or a SQLite file path, migrated to the newest schema."""
    from moray.controlplane.store import db

    url = str(location)
    if "://" not in url:
        url = "sqlite:///:memory:" if url == ":memory:" else f"sqlite:///{Path(url)}"
    if url == "sqlite:///:memory:":
        from sqlalchemy import create_engine
        from sqlalchemy.pool import StaticPool

        engine = create_engine(url, poolclass=StaticPool,
                               connect_args={"check_same_thread": False})
    else:
        engine = db.make_engine(db.database_url(url))
    if not db.at_head(engine):
        db.migrate(engine)
    return engine


class ScanStore:
    """``ScanStore(path_or_url)`` opens (and migrates) its own engine; ``ScanStore(engine)``
    shares one that is already migrated (moray-server's)."""

    def __init__(self, location: Path | str | Engine, clock: Callable[[], float] = time.time
                 ) -> None:
        self._own_engine = not isinstance(location, Engine)
        self._engine = location if isinstance(location, Engine) else open_engine(location)
        self._postgres = self._engine.dialect.name == "postgresql"
        self.path = (Path(str(location)) if self._own_engine and "://" not in str(location)
                     else Path(self._engine.url.database or ""))
        self._clock = clock
        # one connection at a time per store (a web server's thread pool shares it)
        self._lock = threading.RLock()
        self._tx: Connection | None = None

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    @_locked
    def close(self) -> None:
        if self._own_engine:
            self._engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything in the block is one transaction (nested blocks join it)."""
        with self._lock:
            if self._tx is not None:
                yield
                return
            with self._engine.begin() as conn:
                self._tx = conn
                try:
                    yield
                finally:
                    self._tx = None

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        if self._tx is not None:
            yield self._tx
            return
        with self._engine.begin() as conn:
            yield conn

    def _all(self, sql: str, **params: Any) -> list[Any]:
        with self._conn() as c:
            return list(c.execute(text(sql), params))

    def _one(self, sql: str, **params: Any) -> Any:
        with self._conn() as c:
            return c.execute(text(sql), params).first()

    def _run(self, sql: str, **params: Any) -> int:
        with self._conn() as c:
            return int(c.execute(text(sql), params).rowcount)

    # -- vulnerability data --------------------------------------------------------------

    @_locked
    def replace_origin(self, source: str, origin: str, advisories: Iterable[AdvisoryRecord],
                       rows: Iterable[AffectedRecord]) -> int:
        """Replace everything one source record contributed; call inside transaction()."""
        with self._conn() as c:
            c.execute(text("DELETE FROM vuln_affected WHERE source = :s AND origin = :o"),
                      {"s": source, "o": origin})
            for adv in advisories:
                self._upsert_advisory(c, adv)
            values = [{"a": r.advisory_id, "s": r.source, "o": r.origin, "e": r.ecosystem,
                       "rel": r.release, "p": r.package, "st": r.status,
                       "rg": json.dumps(r.ranges), "v": json.dumps(r.versions), "f": r.fixed}
                      for r in rows]
            if values:
                c.execute(text("INSERT INTO vuln_affected (advisory_id, source, origin, "
                               "ecosystem, release, package, status, ranges, versions, fixed) "
                               "VALUES (:a, :s, :o, :e, :rel, :p, :st, :rg, :v, :f)"), values)
        return len(values)

    @staticmethod
    def _upsert_advisory(c: Connection, adv: AdvisoryRecord) -> None:
        old = c.execute(text("SELECT aliases, summary, severity, cvss_score, sources "
                             "FROM vuln_advisory WHERE id = :id"), {"id": adv.id}).first()
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
        if aliases:
            c.execute(text("INSERT INTO vuln_alias (alias, advisory_id) VALUES (:a, :id) "
                           "ON CONFLICT DO NOTHING"),
                      [{"a": a, "id": adv.id} for a in sorted(aliases)])
        c.execute(text(
            "INSERT INTO vuln_advisory (id, aliases, summary, severity, cvss_score, modified, "
            "sources) VALUES (:id, :al, :su, :se, :sc, :mo, :so) ON CONFLICT (id) DO UPDATE "
            "SET aliases = :al, summary = :su, severity = :se, cvss_score = :sc, "
            "modified = :mo, sources = :so"),
            {"id": adv.id, "al": json.dumps(sorted(aliases)), "su": summary, "se": severity,
             "sc": score, "mo": adv.modified, "so": json.dumps(sorted(sources))})

    @_locked
    def record_import(self, path: str, records: int, rows: int, skipped: int) -> None:
        with self._conn() as c:
            c.execute(text("INSERT INTO vuln_import (path, records, rows, skipped, "
                           "imported_at) VALUES (:p, :r, :n, :s, :t)"),
                      {"p": path, "r": records, "n": rows, "s": skipped, "t": self._clock()})
            if records:
                self._bump(c, "vulndb_generation")

    @staticmethod
    def _bump(c: Connection, key: str) -> None:
        c.execute(text(
            "INSERT INTO scanstore_meta (key, value) VALUES (:k, '1') ON CONFLICT (key) DO "
            "UPDATE SET value = CAST(CAST(scanstore_meta.value AS INTEGER) + 1 AS TEXT)"),
            {"k": key})

    @_locked
    def affected_for(self, ecosystem: str, packages: Iterable[str]) -> list[AffectedRecord]:
        names = sorted(set(packages))
        if not names:
            return []
        sql = text("SELECT advisory_id, source, origin, ecosystem, release, package, status, "
                   "ranges, versions, fixed FROM vuln_affected WHERE ecosystem = :e AND "
                   "package IN :names").bindparams(bindparam("names", expanding=True))
        with self._conn() as c:
            cur = c.execute(sql, {"e": ecosystem, "names": names})
            return [AffectedRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]),
                                   json.loads(r[8]), r[9]) for r in cur]

    @_locked
    def advisory(self, advisory_id: str) -> AdvisoryRecord | None:
        r = self._one("SELECT id, aliases, summary, severity, cvss_score, modified, sources "
                      "FROM vuln_advisory WHERE id = :id", id=advisory_id)
        if r is None:
            return None
        return AdvisoryRecord(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5],
                              ",".join(json.loads(r[6])))

    @_locked
    def related_ids(self, advisory_id: str) -> list[str]:
        """Ids linked to ``advisory_id`` by an alias, in either direction."""
        rows = self._all("SELECT advisory_id FROM vuln_alias WHERE alias = :a UNION "
                         "SELECT alias FROM vuln_alias WHERE advisory_id = :a", a=advisory_id)
        return sorted(r[0] for r in rows)

    @_locked
    def generation(self) -> int:
        return self._meta_int("vulndb_generation")

    def _meta_int(self, key: str) -> int:
        r = self._one("SELECT value FROM scanstore_meta WHERE key = :k", k=key)
        return int(r[0]) if r else 0

    @_locked
    def status(self) -> dict[str, Any]:
        def scalar(sql: str) -> int:
            return int(self._one(sql)[0])

        per_eco = {str(k): int(v) for k, v in self._all(
            "SELECT ecosystem || CASE WHEN release != '' THEN ' ' || release ELSE '' END, "
            "COUNT(DISTINCT advisory_id) FROM vuln_affected GROUP BY 1 ORDER BY 1")}
        last = self._one("SELECT path, imported_at FROM vuln_import ORDER BY id DESC LIMIT 1")
        return {
            "path": str(self.path) if self._engine.dialect.name == "sqlite" else self.url,
            "advisories": scalar("SELECT COUNT(*) FROM vuln_advisory"),
            "affected_rows": scalar("SELECT COUNT(*) FROM vuln_affected"),
            "by_ecosystem": per_eco,
            "generation": self.generation(),
            "last_import": {"path": last[0], "at": last[1]} if last else None,
            "cached_layers": scalar("SELECT COUNT(*) FROM scan_layer_cache"),
            "verdicts": scalar("SELECT COUNT(*) FROM image_verdict"),
        }

    # -- scan cache ----------------------------------------------------------------------

    @_locked
    def get_layer_json(self, digest: str, version: str) -> dict[str, Any] | None:
        r = self._one("SELECT result FROM scan_layer_cache WHERE digest = :d AND version = :v",
                      d=digest, v=version)
        return json.loads(r[0]) if r else None

    @_locked
    def put_layer_json(self, digest: str, version: str, result: dict[str, Any]) -> None:
        self._run("INSERT INTO scan_layer_cache (digest, version, result, created) VALUES "
                  "(:d, :v, :r, :t) ON CONFLICT (digest, version) DO UPDATE SET result = :r, "
                  "created = :t", d=digest, v=version, r=json.dumps(result), t=self._clock())

    # -- verdicts ------------------------------------------------------------------------

    @_locked
    def put_verdict(self, v: Verdict) -> None:
        self._run("INSERT INTO image_verdict (image_digest, policy, passed, reasons, "
                  "vulndb_generation, image, created) VALUES (:d, :p, :ok, :r, :g, :i, :t) "
                  "ON CONFLICT (image_digest, policy) DO UPDATE SET passed = :ok, reasons = :r,"
                  " vulndb_generation = :g, image = :i, created = :t",
                  d=v.image_digest, p=v.policy, ok=v.passed, r=json.dumps(v.reasons),
                  g=v.vulndb_generation, i=v.image, t=v.created)

    @_locked
    def record_verdict(self, image_digest: str, image: str, policy: str, passed: bool,
                       reasons: list[str], generation: int | None = None) -> Verdict:
        """Store a verdict stamped with the vulndb generation it was matched against
        (``generation``, e.g. read before the scan began; default: the current one)."""
        current = self.generation()
        gen = current if generation is None else min(generation, current)
        verdict = Verdict(image_digest, policy, passed, reasons, gen, image, self._clock())
        self.put_verdict(verdict)
        return verdict

    @_locked
    def verdicts(self, image_digest: str) -> list[Verdict]:
        rows = self._all("SELECT image_digest, policy, passed, reasons, vulndb_generation, "
                         "image, created FROM image_verdict WHERE image_digest = :d "
                         "ORDER BY policy", d=image_digest)
        return [Verdict(r[0], r[1], bool(r[2]), json.loads(r[3]), r[4], r[5], r[6])
                for r in rows]

    @_locked
    def all_verdicts(self) -> list[Verdict]:
        rows = self._all("SELECT image_digest, policy, passed, reasons, vulndb_generation, "
                         "image, created FROM image_verdict ORDER BY image, policy")
        return [Verdict(r[0], r[1], bool(r[2]), json.loads(r[3]), r[4], r[5], r[6])
                for r in rows]

    # -- scan jobs -----------------------------------------------------------------------

    @_locked
    def enqueue_scan(self, image: str, policy: str = "", *, insecure: bool = False,
                     credentials: str = "") -> int:
        """Queue a scan unless the same job is already queued or leased (its id is returned
        then); atomic across processes and servers (partial unique index on job_key)."""
        key = job_key(image, policy, insecure, credentials)
        now = self._clock()
        with self._conn() as c:
            row = c.execute(text(
                "INSERT INTO scan_job (image, policy, status, created, updated, insecure, "
                "credentials, job_key, generation) VALUES (:i, :p, 'queued', :t, :t, :ins, "
                ":cr, :k, (SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM scanstore_meta "
                "WHERE key = 'vulndb_generation')) ON CONFLICT DO NOTHING RETURNING id"),
                {"i": image, "p": policy, "t": now, "ins": insecure, "cr": credentials,
                 "k": key}).first()
            if row is None:
                row = c.execute(text("SELECT id FROM scan_job WHERE job_key = :k AND status IN "
                                     "('queued', 'running')"), {"k": key}).first()
        if row is None:  # the other job closed between the two statements: queue again
            return self.enqueue_scan(image, policy, insecure=insecure, credentials=credentials)
        return int(row[0])

    @_locked
    def claim_scan(self, worker: str, lease_seconds: float = 600.0,
                   max_attempts: int = 3) -> ScanJob | None:
        """Lease the oldest claimable job to ``worker``; atomic across processes (one UPDATE
        on SQLite; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL)."""
        now = self._clock()
        lock = " FOR UPDATE SKIP LOCKED" if self._postgres else ""
        with self._conn() as c:
            c.execute(text("UPDATE scan_job SET status = 'failed', updated = :t, error = "
                           "'lease expired ' || CAST(attempts AS TEXT) || ' times' WHERE "
                           "status = 'running' AND lease_until < :t AND attempts >= :m"),
                      {"t": now, "m": max_attempts})
            row = c.execute(text(
                "UPDATE scan_job SET status = 'running', worker = :w, lease_until = :until, "
                "attempts = attempts + 1, updated = :t WHERE id = (SELECT id FROM scan_job "
                "WHERE (status = 'queued' OR (status = 'running' AND lease_until < :t)) AND "
                f"attempts < :m ORDER BY id LIMIT 1{lock}) RETURNING id, image, policy, "
                "attempts, insecure, credentials"),
                {"w": worker, "until": now + lease_seconds, "t": now, "m": max_attempts}
            ).first()
        if row is None:
            return None
        return ScanJob(int(row[0]), row[1], row[2], int(row[3]), bool(row[4]), row[5])

    @_locked
    def extend_scan(self, job_id: int, worker: str, lease_seconds: float = 600.0) -> bool:
        """Keep a lease this worker holds for another ``lease_seconds``."""
        now = self._clock()
        return self._run("UPDATE scan_job SET lease_until = :u, updated = :t WHERE id = :id "
                         "AND worker = :w AND status = 'running'",
                         u=now + lease_seconds, t=now, id=job_id, w=worker) == 1

    @_locked
    def release_scan(self, job_id: int, worker: str) -> bool:
        """Give a leased job back unfinished (a worker shutting down): queued again, and the
        attempt does not count."""
        return self._run(
            "UPDATE scan_job SET status = 'queued', worker = '', lease_until = 0, "
            "attempts = attempts - 1, updated = :t WHERE id = :id AND worker = :w AND "
            "status = 'running'", t=self._clock(), id=job_id, w=worker) == 1

    @_locked
    def finish_scan(self, job_id: int, worker: str, *, digest: str = "",
                    error: str = "") -> bool:
        """Close a job this worker holds; False when the lease was lost to another worker."""
        return self._run(
            "UPDATE scan_job SET status = :s, digest = :d, error = :e, updated = :t "
            "WHERE id = :id AND worker = :w AND status = 'running'",
            s="failed" if error else "done", d=digest, e=error[:2000], t=self._clock(),
            id=job_id, w=worker) == 1

    @_locked
    def jobs(self, *, status: str | None = None, limit: int = 10000) -> list[dict[str, Any]]:
        where = "WHERE status = :s " if status else ""
        rows = self._all("SELECT id, image, status, worker, attempts, digest, error, updated "
                         f"FROM scan_job {where}ORDER BY id DESC LIMIT :n", s=status, n=limit)
        keys = ("id", "image", "status", "worker", "attempts", "digest", "error", "updated")
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]

    @_locked
    def job_counts(self) -> dict[str, int]:
        return {str(status): int(n) for status, n in self._all(
            "SELECT status, COUNT(*) FROM scan_job GROUP BY status")}

    @_locked
    def enqueue_stale(self) -> int:
        """Queue a rescan of every image whose verdict predates the current vulndb data and
        that has not been tried at the current data yet (a job enqueued at this generation,
        whatever came of it, counts as tried; a job still queued or leased is not doubled).
        The rescan repeats the image's last job (policy, registry options)."""
        gen = self.generation()
        # one query for the images to queue (the scheduler runs this every few seconds)
        stale = self._all(
            "SELECT DISTINCT v.image FROM image_verdict v WHERE v.vulndb_generation < :g "
            "AND NOT EXISTS (SELECT 1 FROM scan_job j WHERE j.image = v.image AND "
            "(j.generation >= :g OR j.status IN ('queued', 'running')))", g=gen)
        queued = 0
        for (image,) in stale:
            last = self._one("SELECT policy, insecure, credentials FROM scan_job "
                             "WHERE image = :i ORDER BY id DESC LIMIT 1", i=image)
            policy, insecure, creds = (last[0], bool(last[1]), last[2]) if last else ("", False,
                                                                                      "")
            self.enqueue_scan(image, policy, insecure=insecure, credentials=creds)
            queued += 1
        return queued

    # -- registered registries and images (the server's schedule) -------------------------

    @_locked
    def add_registry(self, registry: str, *, repositories: list[str] | None = None,
                     credentials: str = "", insecure: bool = False,
                     interval_seconds: float = 3600.0, policy: str = "") -> RegisteredRegistry:
        now = self._clock()
        with self._conn() as c:
            row = c.execute(text(
                "INSERT INTO scan_registry (registry, repositories, credentials, insecure, "
                "interval_seconds, policy, next_run, last_images, last_error, created) VALUES "
                "(:r, :rep, :c, :i, :iv, :p, :t, 0, '', :t) RETURNING id"),
                {"r": registry, "rep": json.dumps(sorted(set(repositories or []))),
                 "c": credentials, "i": insecure, "iv": interval_seconds, "p": policy,
                 "t": now}).first()
        assert row is not None
        found = self.registry(int(row[0]))
        assert found is not None
        return found

    _REGISTRY_COLUMNS = ("SELECT id, registry, repositories, credentials, insecure, "
                         "interval_seconds, policy, next_run, last_run, last_images, last_error"
                         " FROM scan_registry")

    @staticmethod
    def _registry_row(r: Any) -> RegisteredRegistry:
        repos = r[2] if isinstance(r[2], list) else json.loads(r[2])
        return RegisteredRegistry(int(r[0]), r[1], list(repos), r[3], bool(r[4]), float(r[5]),
                                  r[6], float(r[7]), r[8], int(r[9]), r[10])

    @_locked
    def registry(self, registry_id: int) -> RegisteredRegistry | None:
        r = self._one(self._REGISTRY_COLUMNS + " WHERE id = :id", id=registry_id)
        return self._registry_row(r) if r else None

    @_locked
    def registries(self) -> list[RegisteredRegistry]:
        return [self._registry_row(r) for r in self._all(self._REGISTRY_COLUMNS +
                                                         " ORDER BY id")]

    @_locked
    def remove_registry(self, registry_id: int) -> bool:
        return self._run("DELETE FROM scan_registry WHERE id = :id", id=registry_id) == 1

    @_locked
    def add_image(self, image: str, *, credentials: str = "", insecure: bool = False,
                  interval_seconds: float = 86400.0, policy: str = "") -> RegisteredImage:
        now = self._clock()
        with self._conn() as c:
            row = c.execute(text(
                "INSERT INTO scan_image (image, credentials, insecure, interval_seconds, "
                "policy, next_run, created) VALUES (:im, :c, :i, :iv, :p, :t, :t) RETURNING id"),
                {"im": image, "c": credentials, "i": insecure, "iv": interval_seconds,
                 "p": policy, "t": now}).first()
        assert row is not None
        found = self.image(int(row[0]))
        assert found is not None
        return found

    _IMAGE_COLUMNS = ("SELECT id, image, credentials, insecure, interval_seconds, policy, "
                      "next_run, last_run FROM scan_image")

    @staticmethod
    def _image_row(r: Any) -> RegisteredImage:
        return RegisteredImage(int(r[0]), r[1], r[2], bool(r[3]), float(r[4]), r[5],
                               float(r[6]), r[7])

    @_locked
    def image(self, image_id: int) -> RegisteredImage | None:
        r = self._one(self._IMAGE_COLUMNS + " WHERE id = :id", id=image_id)
        return self._image_row(r) if r else None

    @_locked
    def images(self) -> list[RegisteredImage]:
        return [self._image_row(r) for r in self._all(self._IMAGE_COLUMNS + " ORDER BY id")]

    @_locked
    def remove_image(self, image_id: int) -> bool:
        return self._run("DELETE FROM scan_image WHERE id = :id", id=image_id) == 1

    @_locked
    def due_registries(self) -> list[RegisteredRegistry]:
        return [self._registry_row(r) for r in self._all(
            self._REGISTRY_COLUMNS + " WHERE next_run <= :t ORDER BY next_run", t=self._clock())]

    @_locked
    def due_images(self) -> list[RegisteredImage]:
        return [self._image_row(r) for r in self._all(
            self._IMAGE_COLUMNS + " WHERE next_run <= :t ORDER BY next_run", t=self._clock())]

    @_locked
    def claim_due(self, table: str, row_id: int, seen_next_run: float,
                  interval_seconds: float) -> bool:
        """Move a due row's ``next_run`` on by its interval, if nobody else did since it was
        read: the caller that wins lists (or queues) it, the others skip it."""
        if table not in ("scan_registry", "scan_image"):
            raise ValueError(table)
        now = self._clock()
        return self._run(f"UPDATE {table} SET next_run = :n, last_run = :t WHERE id = :id AND "
                         "next_run = :seen", n=now + interval_seconds, t=now, id=row_id,
                         seen=seen_next_run) == 1

    @_locked
    def registry_listed(self, registry_id: int, images: int, error: str = "") -> None:
        self._run("UPDATE scan_registry SET last_images = :n, last_error = :e WHERE id = :id",
                  n=images, e=error[:2000], id=registry_id)

    @_locked
    def run_registry_now(self, registry_id: int) -> bool:
        return self._run("UPDATE scan_registry SET next_run = 0 WHERE id = :id",
                         id=registry_id) == 1
