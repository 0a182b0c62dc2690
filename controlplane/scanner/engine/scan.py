"""Scanning one image: analyse each layer (or take it from the cache), then merge.

Data flow: ``ImageSource.resolve()`` -> for each layer ``analyze_layer`` (streams the blob
once; every regular file is read at most once and handed to the package analyzers, the
secret scanner and the malware scanner) -> ``LayerResult`` (cached by layer digest) ->
``merge_layers`` applies whiteouts in layer order, so packages reflect the final
filesystem while secrets and malware in files deleted later are still reported, marked
``deleted_later``) -> vulnerability matching -> config findings -> ``ScanResult``.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, TypeVar

from moray.controlplane.scanner.engine.analyzers import Analyzer, FileAnalyzer, registry
from moray.controlplane.scanner.engine.analyzers.ospkg import DEB_COPYRIGHT, copyright_licenses
from moray.controlplane.scanner.engine.config import config_findings, image_config
from moray.controlplane.scanner.engine.layers import Entry, EntryKind, Limits, iter_layer
from moray.controlplane.scanner.engine.model import (
    UNSAFE_ENTRY_RULES,
    Ecosystem,
    EntryFinding,
    LayerResult,
    MalwareFinding,
    OSRelease,
    Package,
    ScanResult,
    ScanWarning,
    SecretFinding,
)
from moray.controlplane.scanner.engine.protocols import (
    LayerCache,
    MalwareScanner,
    SecretScanner,
    VulnMatcher,
)
from moray.controlplane.scanner.engine.source import ImageSource, LayerRef
from moray.controlplane.scanner.errors import ScanError

log = logging.getLogger(__name__)

ANALYZER_VERSION = "3"  # bump when analyzers change, so cached layer results are redone
OS_RELEASE_PATHS = ("etc/os-release", "usr/lib/os-release", "etc/alpine-release",
                    "etc/debian_version")
OS_ECOSYSTEMS = (Ecosystem.DEB, Ecosystem.APK, Ecosystem.RPM)
BINARY_PROBE = 8192  # a file with a NUL in this many leading bytes is binary
SECRET_BATCH = 1 << 20  # bytes of text files handed to the secret scanner at once


@dataclass
class ScanOptions:
    limits: Limits = field(default_factory=Limits)
    analyzers: tuple[Analyzer, ...] = field(default_factory=registry)
    secrets: SecretScanner | None = None
    malware: MalwareScanner | None = None
    cache: LayerCache | None = None
    matcher: VulnMatcher | None = None
    # called with (bytes done, bytes total, layer digest) as layer blobs are read; if it
    # also has start(layers, cached, total, scanners) and stage(name) (the CLI's
    # progress.TerminalProgress), those are called when the layers are known and as the
    # scan moves past them
    progress: Callable[[int, int, str], None] | None = None
    # processes reading layers at once (None: one per available CPU; 1: no worker
    # processes), counting only layers of at least parallel_min_layer bytes
    workers: int | None = None
    parallel_min_layer: int = 8 << 20

    @property
    def cache_version(self) -> str:
        parts = [ANALYZER_VERSION, ",".join(a.name for a in self.analyzers)]
        parts.append(getattr(self.secrets, "fingerprint", "s") if self.secrets else "-")
        parts.append(getattr(self.malware, "fingerprint", "m") if self.malware else "-")
        return "/".join(parts)


def parse_os_release(data: bytes, path: str = "etc/os-release") -> OSRelease | None:
    """os-release fields, or the one-line alpine-release / debian_version files."""
    if path == "etc/alpine-release":
        return OSRelease("alpine", ".".join(data.decode().strip().split(".")[:2]))
    if path == "etc/debian_version":
        major = data.decode("utf-8", "replace").strip().split(".")[0]
        return OSRelease("debian", major) if major.isdigit() else None
    fields = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip("\"'")
    if not fields.get("ID"):
        return None
    version = fields.get("VERSION_ID", "")
    if fields["ID"] == "alpine":
        version = ".".join(version.split(".")[:2])
    return OSRelease(fields["ID"], version, fields.get("VERSION_CODENAME", ""))


class _Refusals:
    """Where a layer's skipped entries (warnings) and hostile ones (findings) go."""

    def __init__(self, result: LayerResult) -> None:
        self.result = result

    def warn(self, reason: str, path: str) -> None:
        log.warning("layer entry skipped", extra={"layer": self.result.digest, "path": path,
                                                  "reason": reason})
        self.result.warnings.append(ScanWarning(reason, self.result.digest, path))

    def unsafe(self, rule: str, reason: str, path: str) -> None:
        log.warning("hostile layer entry refused", extra={
            "layer": self.result.digest, "path": path, "reason": reason})
        severity = UNSAFE_ENTRY_RULES.get(rule, UNSAFE_ENTRY_RULES["unsafe-entry"])[0]
        self.result.unsafe_entries.append(
            EntryFinding(rule, severity, path, self.result.digest, reason))


def analyze_layer(blob: object, layer: LayerRef, options: ScanOptions) -> LayerResult:
    """Stream one layer blob and collect everything it determines."""
    result = LayerResult(digest=layer.digest)
    refusals = _Refusals(result)
    warn, unsafe = refusals.warn, refusals.unsafe

    limits = options.limits
    secrets = options.secrets
    texts = _SecretBatch(result, secrets)
    mscan = options.malware
    malware_max = mscan.max_bytes if mscan else -1
    by_file = {id(a): a for a in options.analyzers if isinstance(a, FileAnalyzer)}
    for entry in iter_layer(blob, layer.digest, limits, warn, unsafe):  # type: ignore[arg-type]
        if entry.kind is EntryKind.WHITEOUT:
            result.whiteouts.append(entry.path)
            continue
        if entry.kind is EntryKind.OPAQUE:
            result.opaque_dirs.append(entry.path)
            continue
        if entry.kind is EntryKind.HARDLINK and entry.linkname not in result.present:
            # a valid tar names an earlier member; anything else would link to whatever
            # the extractor finds there (a lower layer's file, the host's if it escapes)
            unsafe("hardlink-dangling", f"refused: hard link to {entry.linkname}, not an "
                   "earlier entry of this layer", entry.path)
            continue
        result.present.add(entry.path)
        if entry.kind is EntryKind.HARDLINK and entry.linkname in result.files:
            result.files[entry.path] = [replace(p, path=entry.path)
                                        for p in result.files[entry.linkname]]
        if entry.kind is not EntryKind.FILE:
            continue
        result.size += entry.size
        wanted = [a for a in options.analyzers if a.wants(entry.path, entry.mode, entry.size)]
        is_metadata = entry.path in OS_RELEASE_PATHS or _is_copyright(entry.path)
        secret = secrets is not None and _secret_candidate(secrets, entry, warn)
        malware = mscan is not None and entry.size <= malware_max and \
            mscan.wants(entry.path, entry.mode, entry.peek) and \
            not _malware_in_pieces(result, mscan, entry, bool(wanted))
        if not wanted and not is_metadata and not malware and not secret:
            continue  # nothing reads it
        if entry.size > limits.max_file_bytes:
            if wanted:
                warn(f"file larger than {limits.max_file_bytes} bytes not analysed", entry.path)
            continue
        binary = [by_file[id(a)] for a in wanted if id(a) in by_file]
        if binary and len(binary) == len(wanted) and not malware and not is_metadata \
                and (not secret or b"\x00" in entry.peek(BINARY_PROBE)) \
                and _binary_only(result, warn, binary, entry, layer.digest):
            continue
        data = entry.read(limits.max_file_bytes)
        if data is None:
            continue
        if is_metadata:
            _metadata_file(result, entry.path, data)
        for analyzer in wanted:
            _analyze(result, warn, analyzer, entry.path, layer.digest,
                     functools.partial(analyzer.analyze, entry.path, data, layer.digest))
        if secret and data.find(b"\x00", 0, BINARY_PROBE) < 0:
            texts.add(entry.path, data)
        if malware and mscan is not None:
            result.malware.extend(mscan.scan_file(entry.path, data, layer.digest))
    texts.flush()
    return result


class _SecretBatch:
    """Text files on their way to the secret scanner, handed over about SECRET_BATCH
    bytes at a time (one keyword lookup for many small files; the findings come out in
    the files' order, as file by file)."""

    def __init__(self, result: LayerResult, secrets: SecretScanner | None) -> None:
        self._result = result
        self._secrets = secrets
        self._files: list[tuple[str, bytes]] = []
        self._bytes = 0

    def add(self, path: str, data: bytes) -> None:
        self._files.append((path, data))
        self._bytes += len(data)
        if self._bytes >= SECRET_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._files and self._secrets is not None:
            self._result.secrets.extend(self._secrets.scan_texts(self._files,
                                                                 self._result.digest))
        self._files, self._bytes = [], 0


def _secret_candidate(secrets: SecretScanner, entry: Entry,
                      warn: Callable[[str, str], None]) -> bool:
    """Whether the secret rules want the file (no path allow rule takes it out, not over
    their size limit), judged before anything is read; the caller still skips it if it
    turns out binary. A text file over the limit gets a warning."""
    if not secrets.wants(entry.path):
        return False
    if entry.size > secrets.max_bytes:
        if b"\x00" not in entry.peek(BINARY_PROBE):
            warn(f"text file larger than {secrets.max_bytes} bytes not scanned for secrets",
                 entry.path)
        return False
    return True


def _malware_in_pieces(result: LayerResult, mscan: MalwareScanner | None, entry: Entry,
                       wanted: bool) -> bool:
    """A file over the malware window is hashed and matched window by window (never held
    whole) when nothing else needs it whole: always in an uncompressed layer (positioned
    reads, which can also read it again to hash it only when a rule matched), in a
    compressed one when no analyzer wants it. True when that was done."""
    if mscan is None or entry.size <= mscan.window or (wanted and not entry.random_access):
        return False
    again = functools.partial(entry.chunks, mscan.window) if entry.random_access else None
    result.malware.extend(mscan.scan_windows(entry.path, entry.size,
                                             entry.windows(mscan.window, mscan.overlap),
                                             result.digest, again))
    return True


def _is_copyright(path: str) -> bool:
    return path.startswith("usr/share/doc/") and DEB_COPYRIGHT.match(path) is not None


def _metadata_file(result: LayerResult, path: str, data: bytes) -> None:
    """os-release and its one-line cousins, Debian copyright files."""
    if _is_copyright(path):
        result.license_files[path] = copyright_licenses(data)
        return
    found = parse_os_release(data, path)
    # os-release wins over the one-line files, whichever comes first in the tar
    if found and (result.os_release is None or path in OS_RELEASE_PATHS[:2]):
        result.os_release = found


def _analyze(result: LayerResult, warn: Callable[[str, str], None], analyzer: Analyzer,
             path: str, layer: str, run: Callable[[], list[Package]]) -> None:
    try:
        packages = run()
    except (ValueError, UnicodeError, KeyError, IndexError, OSError) as err:
        warn(f"{analyzer.name} analyzer failed: {err}", path)
        return
    if packages:
        result.files.setdefault(path, []).extend(packages)


def _binary_only(result: LayerResult, warn: Callable[[str, str], None],
                 analyzers: Sequence[FileAnalyzer], entry: Entry, layer: str) -> bool:
    """A file only binary analyzers want: nothing past its first bytes unless they match,
    then (uncompressed layers) just the headers and sections the analyzers read. False
    when the file must be read whole after all (a compressed layer's ELF file)."""
    if not any(entry.peek(len(a.magic)) == a.magic for a in analyzers):
        return True
    if not entry.random_access:
        return False
    for analyzer in analyzers:
        _analyze(result, warn, analyzer, entry.path, layer,
                 functools.partial(analyzer.analyze_file, entry.path, entry.read_at,
                                   entry.size, layer))
    return True


def _under(path: str, root: str) -> bool:
    return root in ("", path) or path.startswith(root + "/")


def _removed_by(path: str, later: LayerResult) -> bool:
    """Whether a later layer deletes or overwrites ``path``."""
    if path in later.present or any(_under(path, w) for w in later.whiteouts):
        return True
    return any(_under(path, d) and path != d for d in later.opaque_dirs)


_V = TypeVar("_V")


def _apply(files: dict[str, _V], layer: LayerResult, new: dict[str, _V]) -> None:
    """One layer over the files of those below: its deletions, then its own files."""
    for d in layer.opaque_dirs:
        for p in [p for p in files if _under(p, d) and p != d]:
            del files[p]
    for w in layer.whiteouts:
        for p in [p for p in files if _under(p, w)]:
            del files[p]
    for p in layer.present:
        files.pop(p, None)
    files.update(new)


def merge_license_files(layers: Sequence[LayerResult]) -> dict[str, list[str]]:
    """The license files (Debian copyright) of the final filesystem."""
    found: dict[str, list[str]] = {}
    for layer in layers:
        _apply(found, layer, layer.license_files)
    return found


def attach_licenses(packages: list[Package], license_files: dict[str, list[str]]
                    ) -> list[Package]:
    """Debian packages get their copyright file's licenses; every package's declared
    licenses become SPDX expressions."""
    from moray.controlplane.scanner.engine.licenses import normalise_all

    out = []
    for p in packages:
        declared = p.licenses
        if p.ecosystem is Ecosystem.DEB and not declared:
            declared = tuple(license_files.get(f"usr/share/doc/{p.name.split(':')[0]}/copyright")
                             or license_files.get(f"usr/share/doc/{p.source_name}/copyright")
                             or ())
        out.append(replace(p, licenses=normalise_all(declared)) if declared else p)
    return out


def merge_layers(layers: Sequence[LayerResult]) -> tuple[
    list[Package], list[SecretFinding], list[MalwareFinding], OSRelease | None
]:
    """Apply the layers in order: packages of the final filesystem, every secret and malware."""
    files: dict[str, list[Package]] = {}
    os_release: OSRelease | None = None
    for layer in layers:
        _apply(files, layer, layer.files)
        os_release = layer.os_release or os_release
    packages = [pkg for path in sorted(files) for pkg in files[path]]
    secrets: list[SecretFinding] = []
    malware: list[MalwareFinding] = []
    for i, layer in enumerate(layers):
        later = layers[i + 1:]
        for s in layer.secrets:
            gone = any(_removed_by(s.path, nxt) for nxt in later)
            secrets.append(replace(s, deleted_later=gone))
        for m in layer.malware:
            gone = any(_removed_by(m.path, nxt) for nxt in later)
            malware.append(replace(m, deleted_later=gone))
    return packages, secrets, malware, os_release


def _layer_progress(report: Callable[[int, int, str], None], base: int, total: int,
                    digest: str, count: int) -> None:
    report(min(base + count, total), total, digest)


class _ProgressReader:
    """Passes reads through and reports the running byte count about every MiB."""

    def __init__(self, inner: IO[bytes], report: Callable[[int], None]) -> None:
        self._inner = inner
        self._report = report
        self._count = 0
        self._last = 0

        pread = getattr(inner, "pread", None)
        if pread is not None:
            self.pread = pread

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._count += len(data)
        if self._count - self._last >= 1 << 20:
            self._last = self._count
            self._report(self._count)
        return data


def _scan_layer(source: ImageSource, layer: LayerRef, options: ScanOptions,
                progress: Callable[[int], None] | None = None) -> LayerResult:
    with source.open_blob(layer.digest) as blob:
        reader: object = blob if progress is None else _ProgressReader(blob, progress)
        try:
            result = analyze_layer(reader, layer, options)
            drain = getattr(blob, "drain", None)
            if drain is not None:
                drain()
        except ScanError as err:
            err.source = err.source or source.name
            err.layer = err.layer or layer.digest
            raise
    return result


# Layers are independent, so an image with several big layers is read by forked worker
# processes at once, as Trivy analyses layers in parallel (a 378 MB image with a 270 MB
# and a 107 MB layer: ~1.0 s -> ~0.75 s on 2 cores). Only for sources whose blobs each
# get a file handle of their own (``fork_safe``), and only from a single-threaded process
# (a fork copies no other thread, so a lock one of them held would never be released).
_FORKED: tuple[ImageSource, ScanOptions] | None = None  # inherited by the workers


@dataclass(frozen=True, slots=True)
class _LayerFailure:
    """A ScanError raised in a worker, sent back with its fields (exceptions pickle badly)."""

    kind: type[ScanError]
    message: str
    source: str
    layer: str
    path: str


def _scan_layer_forked(layer: LayerRef) -> LayerResult | _LayerFailure:
    assert _FORKED is not None
    source, options = _FORKED
    try:
        return _scan_layer(source, layer, options)
    except ScanError as err:
        return _LayerFailure(type(err), err.message, err.source, err.layer, err.path)


def _workers(source: ImageSource, layers: Sequence[LayerRef], options: ScanOptions) -> int:
    big = sum(1 for layer in layers if layer.size >= options.parallel_min_layer)
    if big < 2 or not getattr(source, "fork_safe", False) or threading.active_count() > 1:
        return 1
    return min(big, options.workers or len(os.sched_getaffinity(0)))


def _scan_sequential(source: ImageSource, layers: Sequence[LayerRef], options: ScanOptions,
                     done: int, total: int) -> Iterator[tuple[LayerRef, LayerResult]]:
    for layer in layers:
        progress = None
        if options.progress is not None:
            options.progress(min(done, total), total, layer.digest)
            progress = functools.partial(_layer_progress, options.progress, done, total,
                                         layer.digest)
        yield layer, _scan_layer(source, layer, options, progress)
        done += layer.size


def _scan_parallel(source: ImageSource, layers: Sequence[LayerRef], options: ScanOptions,
                   workers: int) -> Iterator[tuple[LayerRef, LayerResult]]:
    """(layer, result) as workers finish them, biggest layers first."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    global _FORKED
    _FORKED = (source, options)
    try:
        with ProcessPoolExecutor(workers, multiprocessing.get_context("fork")) as pool:
            futures = {pool.submit(_scan_layer_forked, layer): layer
                       for layer in sorted(layers, key=lambda x: -x.size)}
            for future in as_completed(futures):
                result = future.result()
                if isinstance(result, _LayerFailure):
                    for other in futures:
                        other.cancel()
                    raise result.kind(result.message, source=result.source,
                                      layer=result.layer, path=result.path)
                yield futures[future], result
    finally:
        _FORKED = None


def scan_image(source: ImageSource, options: ScanOptions | None = None,
               image_name: str = "") -> ScanResult:
    options = options or ScanOptions()
    resolved = source.resolve()
    version = options.cache_version
    total = sum(max(layer.size, 0) for layer in resolved.layers)
    done = 0
    found: dict[str, LayerResult] = {}
    pending: list[LayerRef] = []
    for layer in resolved.layers:
        cached = options.cache.get_layer(layer.digest, version) if options.cache else None
        if cached is not None:
            log.debug("layer from cache", extra={"layer": layer.digest})
            found[layer.digest] = cached
            done += layer.size
        elif layer.digest not in found:
            pending.append(layer)
    _notify(options, "start", len(resolved.layers), len(resolved.layers) - len(pending), total,
            _scanners(options))
    workers = _workers(source, pending, options)
    if workers > 1:
        scanned = _scan_parallel(source, pending, options, workers)
    else:
        scanned = _scan_sequential(source, pending, options, done, total)
    for layer, result in scanned:
        found[layer.digest] = result
        done += layer.size
        if options.cache:
            options.cache.put_layer(result, version)
        if options.progress is not None:
            options.progress(min(done, total), total, layer.digest)
    results = [found[layer.digest] for layer in resolved.layers]
    if options.progress:
        options.progress(total, total, "")
    _notify(options, "stage", "merging layers")
    packages, secrets, malware, os_release = merge_layers(results)
    distro = f"{os_release.id}-{os_release.version_id}" if os_release else ""
    packages = [
        replace(p, path=posixpath.join("/", p.path),
                distro=distro if p.ecosystem in OS_ECOSYSTEMS else "")
        for p in attach_licenses(packages, merge_license_files(results))
    ]
    cfg = image_config(resolved.config)
    scan = ScanResult(
        image=image_name or source.name,
        digest=resolved.digest,
        config_digest=resolved.config_digest,
        layers=[layer.digest for layer in resolved.layers],
        config=cfg,
        os=os_release,
        packages=packages,
        secrets=secrets,
        malware=malware,
        warnings=[w for r in results for w in r.warnings],
        unsafe_entries=[e for r in results for e in r.unsafe_entries],
        repo_tags=resolved.repo_tags,
    )
    scan.config_findings = config_findings(cfg, options.secrets)
    if options.matcher is not None:
        _notify(options, "stage", f"matching {len(packages)} packages against vulnerabilities")
        scan.vulnerabilities = options.matcher.match(packages, os_release)
    return scan


def _scanners(options: ScanOptions) -> list[str]:
    names = ["packages"]
    if options.secrets:
        names.append("secrets")
    if options.malware:
        names.append("malware")
    return names


def _notify(options: ScanOptions, event: str, *args: object) -> None:
    """Call progress.start/stage when the progress object has them."""
    method = getattr(options.progress, event, None)
    if callable(method):
        method(*args)
