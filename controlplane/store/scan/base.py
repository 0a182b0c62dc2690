"""What the scanner's stores share: where the database is by default, opening (and
migrating) an engine, one connection at a time per store object, transactions that
nest, and the ``scanstore_meta`` counters (``vulndb_generation``: bumped by each vulndb
import that adds records; a verdict stamped with an older generation is stale), and
``image_tenant``: which tenant may see which image digest (``link_images``, ``has_image``).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, Integer, Table, Text, cast, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from moray.api.tenants import DEFAULT_TENANT
from moray.controlplane.store.scanmodels import image_tenant, scan_job, scanstore_meta

DEFAULT_DATA_DIR = "/var/lib/moray"
GENERATION = "vulndb_generation"


def data_dir() -> Path:
    return Path(os.environ.get("MORAY_DATA_DIR", DEFAULT_DATA_DIR))


def default_db_path() -> Path:
    return data_dir() / "moray.db"


_P = ParamSpec("_P")
_R = TypeVar("_R")


def locked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run the method holding its store's lock (one connection at a time per store)."""
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


def generation_value() -> ColumnElement[int]:
    """The current vulndb generation as an SQL expression (0 before the first import)."""
    return (select(func.coalesce(func.max(cast(scanstore_meta.c.value, Integer)), 0))
            .where(scanstore_meta.c.key == GENERATION).scalar_subquery())


class ScanStoreBase:
    """``Store(path_or_url)`` opens (and migrates) its own engine; ``Store(engine)``
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
        # called after each verdict is stored (scan/verdicts.py): the server's watcher
        self.on_verdict: Callable[[], None] | None = None

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    @locked
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

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that can say ON CONFLICT (both dialects spell it the same)."""
        return postgresql.insert(table) if self._postgres else sqlite.insert(table)

    def _bump(self, c: Connection, key: str) -> None:
        value = cast(cast(scanstore_meta.c.value, Integer) + 1, Text)
        c.execute(self._insert(scanstore_meta).values(key=key, value="1")
                  .on_conflict_do_update(index_elements=["key"], set_={"value": value}))

    def _meta_int(self, key: str) -> int:
        with self._conn() as c:
            value = c.scalar(select(scanstore_meta.c.value).where(scanstore_meta.c.key == key))
        return int(value) if value is not None else 0

    @locked
    def generation(self) -> int:
        return self._meta_int(GENERATION)

    def _link_images(self, c: Connection, tenant: str, digests: Iterable[str]) -> None:
        rows = [{"tenant": tenant, "image_digest": d[:128], "first_seen": self._clock()}
                for d in sorted(set(digests)) if d]
        if rows:
            c.execute(self._insert(image_tenant).on_conflict_do_nothing(), rows)

    def _link_scanned(self, image: str, digest: str, job_id: int | None) -> set[str]:
        """Make ``digest`` an image of the tenant of job ``job_id`` (None: of each tenant
        with a job of ``image`` queued or leased), a worker reporting the verdict of its
        scan; returns those tenants."""
        j = scan_job.c
        query = (select(j.tenant).where(j.id == job_id) if job_id is not None
                 else select(j.tenant).distinct().where(
                     j.image == image, j.status.in_(("queued", "running"))))
        with self._conn() as c:
            tenants = set(c.scalars(query))
            for tenant in tenants:
                self._link_images(c, tenant, [digest])
        return tenants

    @locked
    def link_images(self, tenant: str, digests: Iterable[str]) -> None:
        """Make ``digests`` images of ``tenant`` (it may see their verdicts, findings)."""
        with self._conn() as c:
            self._link_images(c, tenant, digests)

    @locked
    def has_image(self, tenant: str | None, digest: str) -> bool:
        """May ``tenant`` see the image ``digest`` (None: every tenant may). An image no
        tenant brought in (a verdict recorded by hand) is the default tenant's."""
        if tenant is None:
            return True
        t = image_tenant.c
        with self._conn() as c:
            owners = set(c.scalars(select(t.tenant).where(t.image_digest == digest)))
        return tenant in owners or (not owners and tenant == DEFAULT_TENANT)

    @locked
    def image_tenants(self) -> dict[str, set[str]]:
        """tenant -> its image digests."""
        out: dict[str, set[str]] = {}
        with self._conn() as c:
            for tenant, digest in c.execute(select(image_tenant.c.tenant,
                                                   image_tenant.c.image_digest)):
                out.setdefault(tenant, set()).add(digest)
        return out
