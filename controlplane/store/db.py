"""Database engine and schema migrations for the control plane.

The database is chosen once, at server start: an explicit URL, else ``$MORAY_DATABASE_URL``,
else the SQLite file ``$MORAY_DATA_DIR/moray.db`` (default /var/lib/moray), so
``moray-server`` with no arguments needs no set-up. ``postgresql://`` URLs use psycopg 3.
``migrate()`` brings the schema to the newest alembic revision; it is idempotent.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "/var/lib/moray"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get("MORAY_DATA_DIR") or DEFAULT_DATA_DIR)


def database_url(url: str | None = None, data: str | os.PathLike[str] | None = None) -> str:
    """The SQLAlchemy URL to use (see the module docstring for the order)."""
    url = url or os.environ.get("MORAY_DATABASE_URL")
    if not url:
        return f"sqlite:///{data_dir(data) / 'moray.db'}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at checkpoint, no corruption
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine with the settings each backend needs (WAL and a busy timeout for SQLite,
    connection health checks for PostgreSQL)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


# The newest revision in migrations/versions (a unit test checks that they agree): a
# store already there is opened without importing alembic, which costs a CLI ~0.3 s.
HEAD = "0013"


def at_head(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT version_num FROM cp_alembic_version")).first()
    except SQLAlchemyError:
        return False
    return row is not None and row[0] == HEAD


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


# alembic's command API keeps its context in module globals: one migration at a time
_MIGRATE_LOCK = threading.Lock()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: the newest)."""
    from alembic import command

    cfg = alembic_config(engine)
    with _MIGRATE_LOCK, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    log.info("schema migrated", extra={"revision": revision, "url": engine.url.render_as_string()})


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": "cp_alembic_version"})
        return ctx.get_current_revision()
