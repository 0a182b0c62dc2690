"""podman (containers/storage and libpod): a container's name, image and labels.

:class:`PodmanRuntime` reads ``<root>/<driver>-containers/containers.json`` (names, image
id), ``<driver>-images/images.json`` (image names) and libpod's
``<root>/libpod/bolt_state.db`` (container and pod labels). Each parsed file is cached
with its mtime and parsed again only when the mtime changes; a bolt database caught
mid-write is dropped from the cache (``inspect`` returns None and the resolver retries).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from moray.agent.enrich.boltdb import BoltError, BoltFile
from moray.agent.enrich.runtimes.base import (
    CgroupMatch,
    ContainerInfo,
    Runtime,
    StateFiles,
    as_digest,
    as_str,
)


def _str_map(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _json_obj(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as err:
        raise BoltError(f"not JSON: {err}") from err
    return doc if isinstance(doc, dict) else {}


class PodmanRuntime:
    """podman (containers/storage): ``<root>/<driver>-containers/containers.json`` for
    the container's names and image id, ``<driver>-images/images.json`` for the image's
    names, libpod's ``<root>/libpod/bolt_state.db`` for container and pod labels.  The
    files are re-parsed only when their mtime changes."""

    kind = Runtime.PODMAN

    def __init__(self, storage_root: str = "/var/lib/containers/storage",
                 host_root: str = "/") -> None:
        self._files = StateFiles(host_root)
        self._root = self._files.host(storage_root)
        self._cache: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}
        self._bolt: tuple[int, BoltFile] | None = None

    def _table(self, kind: str) -> dict[str, dict[str, Any]]:
        """id -> entry of every ``*-<kind>/<kind>.json`` under the storage root."""
        table: dict[str, dict[str, Any]] = {}
        for path in glob.glob(os.path.join(self._root, f"*-{kind}", f"{kind}.json")):
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError as err:
                self._files.note(path, err)
                continue
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                doc = self._files.json(path)
                rows = {str(e["id"]): e for e in doc if isinstance(e, dict) and "id" in e} \
                    if isinstance(doc, list) else {}
                cached = (mtime, rows)
                self._cache[path] = cached
            table.update(cached[1])
        return table

    def inspect(self, match: CgroupMatch) -> ContainerInfo | None:
        entry = self._table("containers").get(match.container_id)
        if entry is None:
            return None
        names = entry.get("names")
        name = as_str(names[0]) if isinstance(names, list) and names else None
        image_id = as_str(entry.get("image"))
        image = None
        try:
            meta = json.loads(entry.get("metadata") or "{}")
        except (TypeError, ValueError):
            meta = {}
        if isinstance(meta, dict):
            image = as_str(meta.get("image-name"))
        if image is None and image_id:
            img_names = self._table("images").get(image_id, {}).get("names")
            image = as_str(img_names[0]) if isinstance(img_names, list) and img_names else None
        labels = self._labels(match.container_id)
        if labels is None:
            return None  # libpod's database caught mid-write: the resolver retries
        return ContainerInfo(Runtime.PODMAN, name=name, image=image,
                             image_digest=as_digest(image_id), labels=labels[0],
                             pod_labels=labels[1])

    def _labels(self, cid: str) -> tuple[dict[str, str], dict[str, str]] | None:
        """Labels of the container and of its pod, from libpod's bolt database
        (``<root>/libpod/bolt_state.db``: ``ctr/<id>/config``, ``pod/<id>/config``),
        re-read when its mtime changes.  No database (another libpod backend): no labels;
        an inconsistent one (mid-write): None."""
        path = os.path.join(self._root, "libpod", "bolt_state.db")
        try:
            mtime = os.stat(path).st_mtime_ns
            if self._bolt is None or self._bolt[0] != mtime:
                self._bolt = (mtime, BoltFile.open(path))
            db = self._bolt[1]
            ctr = _json_obj(db.get([b"ctr", cid.encode()], b"config"))
            pod_id = as_str(ctr.get("pod"))
            pod = _json_obj(db.get([b"pod", pod_id.encode()], b"config")) if pod_id else {}
        except OSError as err:
            self._files.note(path, err)
            return {}, {}
        except BoltError as err:
            self._bolt = None
            self._files.note(path, err)
            return None
        return _str_map(ctr.get("labels")), _str_map(pod.get("labels"))
