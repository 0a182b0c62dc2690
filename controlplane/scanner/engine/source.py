"""Image sources: where manifests, configs and layer blobs come from.

An ``ImageSource`` hands out the resolved manifest and opens blobs as streams; it never
extracts anything. Implementations: ``OCILayoutSource`` (a directory), ``ArchiveSource``
(a ``docker save`` archive or an OCI archive, i.e. a tarred OCI layout) and, in
``registry.py``, ``RegistrySource``. Blob reads are hashed as they stream and checked
against their digest at end of stream.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import logging
import os
import posixpath
import queue
import re
import tarfile
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from moray.controlplane.scanner.errors import (
    DigestMismatchError,
    ImageFormatError,
    LimitExceededError,
)

log = logging.getLogger(__name__)

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_JSON_BYTES = 16 * 1024 * 1024

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)


@dataclass(frozen=True, slots=True)
class LayerRef:
    digest: str  # digest of the blob as stored (compressed)
    media_type: str
    size: int
    diff_id: str = ""  # digest of the uncompressed tar, from the config


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    digest: str  # manifest digest
    config_digest: str
    config: dict[str, Any]
    layers: tuple[LayerRef, ...]
    repo_tags: tuple[str, ...] = field(default_factory=tuple)


class ImageSource(Protocol):
    name: str

    def resolve(self) -> ResolvedImage: ...

    def open_blob(self, digest: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...


def check_digest(digest: str, source: str) -> str:
    """A digest that is safe to use as a file name (also stops traversal via digests)."""
    if not DIGEST_RE.match(digest):
        raise ImageFormatError(f"unsupported or malformed digest {digest!r}", source=source)
    return digest


class BackgroundHash:
    """SHA-256 computed on a thread of its own. hashlib releases the GIL while it hashes,
    so hashing a layer overlaps with parsing it (on a 378 MB image, ~0.2 s of a ~1.2 s
    scan left the critical path). At most ``depth`` chunks wait; the thread ends at
    ``hexdigest()``, or when the object is garbage collected (a scan that failed midway).
    """

    def __init__(self, depth: int = 16) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, args=(self._hash, self._queue),
                                        name="blob-sha256", daemon=True)
        self._thread.start()
        self._stop = weakref.finalize(self, self._queue.put, None)

    @staticmethod
    def _run(h: Any, chunks: queue.Queue[bytes | None]) -> None:
        while (chunk := chunks.get()) is not None:
            h.update(chunk)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def hexdigest(self) -> str:
        if self._stop.alive:
            self._stop()
            self._thread.join()
        return str(self._hash.hexdigest())


class HashingReader:
    """Wraps a blob stream: hashes what is read, checks the digest at end of stream."""

    def __init__(self, raw: IO[bytes], digest: str, source: str, limit: int,
                 pread: Callable[[int, int], bytes] | None = None) -> None:
        self._raw = raw
        if pread is not None:
            # positioned reads of the blob for the binary analyzers; the stream still
            # reads and hashes every byte, so a changed blob still fails the scan
            self.pread = pread
        self._digest = digest
        self._hash = BackgroundHash()
        self._source = source
        self._limit = limit
        self.count = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.count += len(data)
        if self.count > self._limit:
            raise LimitExceededError(
                f"blob larger than {self._limit} bytes", source=self._source, layer=self._digest
            )
        if data:
            self._hash.update(data)
        elif n != 0:
            self.verify()
        return data

    def readable(self) -> bool:
        return True

    def verify(self) -> None:
        if self._checked:
            return
        self._checked = True
        got = "sha256:" + self._hash.hexdigest()
        if got != self._digest:
            raise DigestMismatchError(
                f"blob content hashes to {got}", source=self._source, layer=self._digest
            )

    def drain(self) -> None:
        """Read to the end so the digest is checked even if the consumer stopped early."""
        while self.read(1 << 20):
            pass


def _load_json(data: bytes, what: str, source: str) -> Any:
    if len(data) > MAX_JSON_BYTES:
        raise LimitExceededError(f"{what} larger than {MAX_JSON_BYTES} bytes", source=source)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ImageFormatError(f"{what} is not valid JSON: {err}", source=source) from err


def pick_manifest(
    index: dict[str, Any], source: str, ref: str | None, platform: tuple[str, str]
) -> dict[str, Any]:
    """Choose one manifest descriptor from an index: by ref name, else by platform."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise ImageFormatError("index lists no manifests", source=source)
    if ref:
        named = [
            m
            for m in manifests
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
            or ref in m.get("annotations", {}).get("io.containerd.image.name", "")
        ]
        if not named:
            raise ImageFormatError(f"no image named {ref!r} in the index", source=source)
        manifests = named
    if len(manifests) == 1:
        return dict(manifests[0])
    for m in manifests:
        plat = m.get("platform") or {}
        if (plat.get("os"), plat.get("architecture")) == platform:
            return dict(m)
    raise ImageFormatError(
        f"index has {len(manifests)} manifests and none for {platform[0]}/{platform[1]}",
        source=source,
    )


def resolve_oci(
    read_blob: Any, index: dict[str, Any], source: str, ref: str | None,
    platform: tuple[str, str] = ("linux", "amd64"),
) -> ResolvedImage:
    """Walk index -> (nested index) -> manifest -> config, reading blobs with read_blob."""
    desc = pick_manifest(index, source, ref, platform)
    for _ in range(4):
        digest = check_digest(str(desc.get("digest", "")), source)
        doc = _load_json(read_blob(digest), "manifest", source)
        media = doc.get("mediaType") or desc.get("mediaType", "")
        if media in INDEX_TYPES or "manifests" in doc:
            desc = pick_manifest(doc, source, None, platform)
            continue
        return manifest_to_image(doc, digest, read_blob, source)
    raise ImageFormatError("index nesting too deep", source=source)


def manifest_to_image(
    doc: dict[str, Any], digest: str, read_blob: Any, source: str, tags: tuple[str, ...] = ()
) -> ResolvedImage:
    try:
        config_digest = check_digest(doc["config"]["digest"], source)
        layer_docs = doc["layers"]
    except (KeyError, TypeError) as err:
        raise ImageFormatError(f"manifest lacks {err}", source=source) from err
    config = _load_json(read_blob(config_digest), "image config", source)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers = []
    for i, layer in enumerate(layer_docs):
        layers.append(
            LayerRef(
                digest=check_digest(str(layer.get("digest", "")), source),
                media_type=str(layer.get("mediaType", "")),
                size=int(layer.get("size", 0)),
                diff_id=str(diff_ids[i]) if i < len(diff_ids) else "",
            )
        )
    return ResolvedImage(digest, config_digest, config, tuple(layers), tags)


class OCILayoutSource:
    """An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256/``)."""

    # open_blob opens a file of its own each time: forked processes can read layers at once
    fork_safe = True

    def __init__(self, path: Path, ref: str | None = None, max_blob: int = 1 << 36) -> None:
        self.path = path
        self.name = str(path)
        self.ref = ref
        self.max_blob = max_blob

    def _blob_path(self, digest: str) -> Path:
        algo, _, hexd = check_digest(digest, self.name).partition(":")
        return self.path / "blobs" / algo / hexd

    def _read_small(self, digest: str) -> bytes:
        with self.open_blob(digest) as f:
            data = f.read(MAX_JSON_BYTES + 1)
            if len(data) <= MAX_JSON_BYTES:
                f.read()
        return data

    def resolve(self) -> ResolvedImage:
        try:
            index = _load_json((self.path / "index.json").read_bytes(), "index.json", self.name)
        except OSError as err:
            raise ImageFormatError(f"not an OCI layout: {err.strerror}", source=self.name) from err
        return resolve_oci(self._read_small, index, self.name, self.ref)

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[IO[bytes]]:
        path = self._blob_path(digest)
        if path.is_symlink():
            raise ImageFormatError("blob is a symlink", source=self.name, path=str(path))
        try:
            raw = path.open("rb")
        except OSError as err:
            raise ImageFormatError(f"missing blob: {err.strerror}", source=self.name) from err
        with raw:
            yield HashingReader(raw, digest, self.name, self.max_blob,  # type: ignore[misc]
                                functools.partial(_pread, raw.fileno()))


class ArchiveSource:
    """A ``docker save`` archive or an OCI archive (a tar of an OCI layout).

    Members are looked up by normalised name inside the tar, never extracted; member
    symlinks (older ``docker save`` links duplicate layers) are resolved inside the tar.
    """

    def __init__(self, path: Path, ref: str | None = None, max_blob: int = 1 << 36) -> None:
        self.path = path
        self.name = str(path)
        self.ref = ref
        self.max_blob = max_blob
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed in close()
            self._members = {
                posixpath.normpath(m.name.lstrip("/")): m for m in self._tar.getmembers()
            }
        except (OSError, tarfile.TarError) as err:
            raise ImageFormatError(f"cannot read archive: {err}", source=self.name) from err
        self._docker_layers: dict[str, str] = {}  # diff id -> member name

    def close(self) -> None:
        self._tar.close()

    @property
    def fork_safe(self) -> bool:
        """Whether forked processes can read layers at once: an uncompressed archive's
        layers are read through a file handle of their own (see open_blob); a compressed
        one's through the shared tarfile."""
        return isinstance(self._tar.fileobj, io.BufferedReader)

    def __enter__(self) -> ArchiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _member(self, name: str) -> tarfile.TarInfo:
        norm = posixpath.normpath(name.lstrip("/"))
        for _ in range(8):
            if norm.startswith("../") or norm == "..":
                raise ImageFormatError("archive member escapes", source=self.name, path=name)
            member = self._members.get(norm)
            if member is None:
                raise ImageFormatError("archive member missing", source=self.name, path=name)
            if member.issym():
                norm = posixpath.normpath(posixpath.join(posixpath.dirname(norm), member.linkname))
                continue
            if member.islnk():
                norm = posixpath.normpath(member.linkname)
                continue
            if not member.isfile():
                raise ImageFormatError("archive member is not a file", source=self.name, path=name)
            return member
        raise ImageFormatError("archive member link loop", source=self.name, path=name)

    def _read_member(self, name: str) -> bytes:
        member = self._member(name)
        if member.size > MAX_JSON_BYTES:
            raise LimitExceededError("metadata member too large", source=self.name, path=name)
        f = self._tar.extractfile(member)
        assert f is not None
        return f.read()

    def _read_small(self, digest: str) -> bytes:
        data = self._read_member("blobs/" + check_digest(digest, self.name).replace(":", "/"))
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatchError("blob content does not match", source=self.name, layer=digest)
        return data

    def resolve(self) -> ResolvedImage:
        if "index.json" in self._members and "blobs" in {n.split("/")[0] for n in self._members}:
            index = _load_json(self._read_member("index.json"), "index.json", self.name)
            resolved = resolve_oci(self._read_small, index, self.name, self.ref)
            tags = self._docker_tags()
            return ResolvedImage(
                resolved.digest, resolved.config_digest, resolved.config, resolved.layers,
                tags or resolved.repo_tags,
            )
        if "manifest.json" in self._members:
            return self._resolve_docker()
        raise ImageFormatError(
            "archive has neither index.json (OCI) nor manifest.json (docker save)", source=self.name
        )

    def _docker_tags(self) -> tuple[str, ...]:
        if "manifest.json" not in self._members:
            return ()
        entries = _load_json(self._read_member("manifest.json"), "manifest.json", self.name)
        if isinstance(entries, list) and entries:
            return tuple(entries[0].get("RepoTags") or ())
        return ()

    def _resolve_docker(self) -> ResolvedImage:
        entries = _load_json(self._read_member("manifest.json"), "manifest.json", self.name)
        if not isinstance(entries, list) or not entries:
            raise ImageFormatError("manifest.json lists no images", source=self.name)
        entry = entries[0]
        if self.ref:
            found = [e for e in entries if self.ref in (e.get("RepoTags") or [])]
            if not found:
                raise ImageFormatError(f"no image tagged {self.ref!r}", source=self.name)
            entry = found[0]
        try:
            config_bytes = self._read_member(entry["Config"])
            layer_names = list(entry["Layers"])
        except (KeyError, TypeError) as err:
            raise ImageFormatError(f"manifest.json entry lacks {err}", source=self.name) from err
        config = _load_json(config_bytes, "image config", self.name)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(layer_names):
            raise ImageFormatError("config diff_ids do not match layers", source=self.name)
        layers = []
        for diff_id, name in zip(diff_ids, layer_names, strict=True):
            check_digest(diff_id, self.name)
            self._docker_layers[diff_id] = name
            size = self._member(name).size
            layers.append(LayerRef(diff_id, "application/vnd.docker.image.rootfs.diff.tar", size,
                                   diff_id))
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        # docker save keeps no registry manifest; synthesise one so the digest is stable.
        manifest = json.dumps(
            {"config": config_digest, "layers": [layer.digest for layer in layers]},
            sort_keys=True,
        ).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        return ResolvedImage(digest, config_digest, config, tuple(layers),
                             tuple(entry.get("RepoTags") or ()))

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[IO[bytes]]:
        check_digest(digest, self.name)
        name = self._docker_layers.get(digest) or "blobs/" + digest.replace(":", "/")
        member = self._member(name)
        if digest in self._docker_layers:
            compressed = self._decompressed(member)
            if compressed is not None:
                # a docker-save layout whose layer is compressed (containerd's image
                # store, crane, an anonymous "<id>.tar.gz"): its digest is the diff_id,
                # the hash of the uncompressed tar, so that is what is hashed and read
                yield HashingReader(compressed, digest, self.name, self.max_blob)  # type: ignore[misc]
                return
        if isinstance(self._tar.fileobj, io.BufferedReader) and not member.sparse:
            # an uncompressed archive: read the member's bytes straight from the file,
            # without tarfile's reader (one Python layer and one copy less per chunk)
            with self.path.open("rb", buffering=0) as raw:
                raw.seek(member.offset_data)
                piece = _Slice(raw, member.size)
                yield HashingReader(piece, digest,  # type: ignore[misc,arg-type]
                                    self.name, self.max_blob, piece.pread)
            return
        f = self._tar.extractfile(member)
        assert f is not None
        yield HashingReader(f, digest, self.name, self.max_blob)  # type: ignore[misc]


    def _decompressed(self, member: tarfile.TarInfo) -> IO[bytes] | None:
        """The member as an uncompressed stream if it is gzip or zstd, else None."""
        f = self._tar.extractfile(member)
        if f is None:
            return None
        head = f.read(4)
        f.seek(0)
        if head[:2] == b"\x1f\x8b":
            return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
        if head == b"\x28\xb5\x2f\xfd":
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(f)
        return None


class _Slice:
    """``size`` bytes of a file, from its current position."""

    def __init__(self, raw: IO[bytes], size: int) -> None:
        self._raw = raw
        self._left = size
        self._start = raw.tell()
        self._size = size

    def pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` in the slice, never past its end."""
        n = min(n, self._size - offset)
        return _pread(self._raw.fileno(), self._start + offset, n) if offset >= 0 else b""

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._raw.read(n) if n > 0 else b""
        self._left -= len(data)
        return data


def _pread(fd: int, offset: int, n: int) -> bytes:
    return os.pread(fd, n, offset) if n > 0 else b""


def open_source(path: Path, ref: str | None = None) -> ImageSource:
    """An image source for a path on disk: a layout directory or an archive."""
    if path.is_dir():
        return OCILayoutSource(path, ref)
    if path.is_file():
        return ArchiveSource(path, ref)
    raise ImageFormatError("no such image file or directory", source=str(path))
