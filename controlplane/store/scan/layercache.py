"""The per-layer scan cache (``scan_layer_cache``): an analysed layer's result, written
once per (layer digest, analyzer version). Layers are content-addressed, so entries never
go stale, only unused.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from moray.controlplane.store.scan.base import ScanStoreBase, locked
from moray.controlplane.store.scanmodels import scan_layer_cache


class LayerCache(ScanStoreBase):
    @locked
    def get_layer_json(self, digest: str, version: str) -> dict[str, Any] | None:
        t = scan_layer_cache.c
        with self._conn() as c:
            result = c.scalar(select(t.result).where(t.digest == digest, t.version == version))
        return json.loads(result) if result is not None else None

    @locked
    def put_layer_json(self, digest: str, version: str, result: dict[str, Any]) -> None:
        row = {"result": json.dumps(result), "created": self._clock()}
        with self._conn() as c:
            c.execute(self._insert(scan_layer_cache).values(digest=digest, version=version, **row)
                      .on_conflict_do_update(index_elements=["digest", "version"], set_=row))
