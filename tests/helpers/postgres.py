"""A throwaway PostgreSQL server for tests: Debian's postgresql package (installed by
.ci/run), a fresh cluster under a temporary directory, trust authentication on 127.0.0.1,
run as the ``postgres`` user when the tests run as root."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def ensure_postgresql() -> Path | None:
    """The PostgreSQL bin directory, installing Debian's ``postgresql`` package first when
    it is missing and we are root (what .ci/run does up front; this keeps the test
    self-sufficient on a fresh machine)."""
    if pg_bindir() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "postgresql"]
        done = subprocess.run(install, env=env, capture_output=True, timeout=600, check=False)
        if done.returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                           timeout=600, check=False)
            subprocess.run(install, env=env, capture_output=True, timeout=600, check=False)
    return pg_bindir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextmanager
def postgres_server(port: int | None = None) -> Iterator[str]:
    """Yields a base URL ``postgresql://moray@127.0.0.1:PORT`` (``port``: a chosen one,
    default a free one); stops and removes the cluster."""
    bindir = pg_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="moray-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = port or _free_port()
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "moray",
                                  "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True)
        subprocess.run(_as_owner([
            str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l",
            str(root / "log"), "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=300", "start"]), check=True, capture_output=True)
        yield f"postgresql://moray@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "stop"]), capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def create_database(base_url: str, name: str | None = None) -> str:
    """A new empty database on the server at ``base_url``; returns its URL."""
    name = name or "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base_url + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"
