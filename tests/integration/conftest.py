"""Fixtures shared by the control-plane integration tests.

`pg_base`: a real PostgreSQL (Debian's, started once per module by the fixture); each test
gets its own database from it with `create_database`. `server`: a real moray-server on
loopback, once on SQLite and once on PostgreSQL; `module_server`: the same, one per module
(a module whose tests share it defines `server` as `module_server`). A module may define
its own `server` (e.g. SQLite only): pytest then uses the module's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.controlplane import ServerProcess

# tests.helpers.postgres imports psycopg, which the kernel matrix's guests do not carry
# (they run only the enforcement modules of this directory): imported where used.


@pytest.fixture(scope="module")
def pg_base() -> Iterator[str]:
    from tests.helpers.postgres import ensure_postgresql, postgres_server

    if ensure_postgresql() is None:
        pytest.skip("PostgreSQL is not installed and could not be installed")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    url = None
    if request.param == "postgresql":
        from tests.helpers.postgres import create_database

        url = create_database(request.getfixturevalue("pg_base"))
    srv = ServerProcess(tmp_path / "server", database_url=url).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_server(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    url = None
    if request.param == "postgresql":
        from tests.helpers.postgres import create_database

        url = create_database(request.getfixturevalue("pg_base"))
    srv = ServerProcess(tmp_path_factory.mktemp("server"), database_url=url).start()
    yield srv
    srv.stop()
