"""Per-layer result caches, keyed by layer digest + analyzer version.

- ``FileLayerCache``: what ``moray-scan`` uses, a SQLite file of its own
  (``$MORAY_DATA_DIR/layer-cache.sqlite``) through the stdlib ``sqlite3``. Rows are
  written once per (digest, version) and never change (layers are content-addressed), so
  the file needs no migrations, and a scan that matches no vulnerabilities locally does not
  open the store at all (SQLAlchemy, alembic and the migrations cost ~0.4 s of start-up,
  Trivy keeps its layer cache apart from its vulnerability database for the same reason).
  Deleting the file only costs rescans.
- ``StoreLayerCache``: the store's ``scan_layer_cache`` table, shared by the scan workers
  of one moray-server.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from moray.controlplane.scanner.engine.model import LayerResult
from moray.controlplane.scanner.engine.serialize import layer_from_json, layer_to_json

if TYPE_CHECKING:
    from moray.controlplane.store.scanstore import ScanStore

log = logging.getLogger(__name__)

# controlplane.store.scanstore.data_dir() says the same; not imported from there because
# that module imports SQLAlchemy
DEFAULT_DATA_DIR = "/var/lib/moray"


def data_dir() -> Path:
    return Path(os.environ.get("MORAY_DATA_DIR", DEFAULT_DATA_DIR))


def default_cache_path() -> Path:
    return data_dir() / "layer-cache.sqlite"


class _Counting:
    """hits / misses, and a cached document turned back into a LayerResult (an unreadable
    one is a miss: the layer is scanned again)."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0

    def _result(self, digest: str, raw: Any | None,
                decode: Callable[[Any], Any]) -> LayerResult | None:
        if raw is None:
            self.misses += 1
            return None
        try:
            result = layer_from_json(decode(raw))
        except (KeyError, TypeError, ValueError) as err:
            log.warning("unreadable cached layer, rescanning",
                        extra={"layer": digest, "error": str(err)})
            self.misses += 1
            return None
        self.hits += 1
        return result


class FileLayerCache(_Counting):
    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # autocommit; concurrent scans on one host wait for each other's writes. WAL with
        # synchronous=NORMAL: a commit does not wait for fsync (one per layer and one to
        # create the table cost 10-80 ms of a 150 ms scan), and a crash loses at most the
        # last rows, never the file's consistency
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS layer_cache (digest TEXT NOT NULL, "
                         "version TEXT NOT NULL, result BLOB NOT NULL, created REAL NOT NULL, "
                         "PRIMARY KEY (digest, version))")

    def get_layer(self, digest: str, version: str) -> LayerResult | None:
        row = self._db.execute("SELECT result FROM layer_cache WHERE digest = ? AND "
                               "version = ?", (digest, version)).fetchone()
        return self._result(digest, None if row is None else row[0], _loads)

    def put_layer(self, result: LayerResult, version: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO layer_cache VALUES (?, ?, ?, ?)",
                         (result.digest, version, _dumps(layer_to_json(result)), time.time()))

    def close(self) -> None:
        self._db.close()


def _dumps(doc: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # a path that is not UTF-8 (kept as surrogate escapes): stdlib json
        return json.dumps(doc).encode()


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # what _dumps wrote with the stdlib
        return json.loads(raw)


class StoreLayerCache(_Counting):
    def __init__(self, store: ScanStore) -> None:
        super().__init__()
        self.store = store

    def get_layer(self, digest: str, version: str) -> LayerResult | None:
        return self._result(digest, self.store.get_layer_json(digest, version),
                            lambda doc: doc)

    def put_layer(self, result: LayerResult, version: str) -> None:
        self.store.put_layer_json(result.digest, version, layer_to_json(result))
