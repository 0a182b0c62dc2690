"""The per-layer result cache, kept in the store and keyed by layer digest + analyzer version."""

from __future__ import annotations

import logging

from controlplane.scanner.model import LayerResult
from controlplane.scanner.serialize import layer_from_json, layer_to_json
from controlplane.store.scanstore import ScanStore

log = logging.getLogger(__name__)


class StoreLayerCache:
    def __init__(self, store: ScanStore) -> None:
        self.store = store
        self.hits = 0
        self.misses = 0

    def get_layer(self, digest: str, version: str) -> LayerResult | None:
        doc = self.store.get_layer_json(digest, version)
        if doc is None:
            self.misses += 1
            return None
        try:
            result = layer_from_json(doc)
        except (KeyError, TypeError, ValueError) as err:
            log.warning("unreadable cached layer, rescanning",
                        extra={"layer": digest, "error": str(err)})
            self.misses += 1
            return None
        self.hits += 1
        return result

    def put_layer(self, result: LayerResult, version: str) -> None:
        self.store.put_layer_json(result.digest, version, layer_to_json(result))
