"""Alembic environment: migrates the connection handed in by controlplane.store.db, or the
URL in alembic.ini when run from the alembic command line. Only the control plane's
tables (``cp_*``) and the scanner's (``scanmodels``) are compared; anything else that
shares the database is left alone."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import engine_from_config, pool

from moray.controlplane.store import scanmodels  # noqa: F401 - registers the scanner's tables
from moray.controlplane.store.migrations.env_filter import include_object
from moray.controlplane.store.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = engine_from_config(config.get_section(config.config_ini_section) or {},
                                    prefix="sqlalchemy.", poolclass=pool.NullPool)
        with engine.connect() as conn:
            _migrate(conn)
    else:
        _migrate(connection)


def _migrate(connection: Any) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      include_object=include_object, render_as_batch=True,
                      version_table="cp_alembic_version")
    with context.begin_transaction():
        context.run_migrations()


run()
