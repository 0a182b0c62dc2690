"""``moray scan IMAGE`` (= ``moray-scan IMAGE``): scan an image from CI or a shell.

IMAGE is an OCI layout directory, a ``docker save`` or OCI archive, or a registry
reference (``registry.example:5000/team/app:1.0``, ``...@sha256:...``). Exit codes:
0 the image passed (or no policy was given), 1 it failed ``--fail-on`` / ``--policy``,
2 the scan could not be done (bad input, refused archive, registry error, or vulnerabilities
asked for with no vulnerability data or data older than ``--max-vulndb-age``: a gate must
never pass because the store was empty; ``--allow-stale-vulndb`` scans anyway, with a
warning). Reading the store never creates it (nor its directory).
``--server``/``--token``/``--ca`` (or ``$MORAY_SERVER``..., or the config file: see
moray.clientconfig): match vulnerabilities on moray-server instead of the local store.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moray.clientconfig import ClientConfig, add_client_options, from_args
from moray.controlplane.scanner.engine.cache import FileLayerCache, data_dir, default_cache_path
from moray.controlplane.scanner.engine.model import ScanResult, Severity
from moray.controlplane.scanner.engine.report import render
from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.scanner.engine.source import ImageSource, open_source
from moray.controlplane.scanner.errors import ImageFormatError, ScanError, VulnDataError
from moray.exitcodes import FAILED, OK

# Imported where they are used, so a scan starts faster: the store (SQLAlchemy, alembic:
# ~0.4 s with its migrations; only for local vulnerability matching and --record-verdict),
# httpx (--server only), univers (matching only), PyYAML (policy files only), yara-python
# (malware only), the secret rules (compiled at import).
if TYPE_CHECKING:
    from moray.controlplane.scanner.engine.policy import AssurancePolicy
    from moray.controlplane.scanner.engine.protocols import VulnMatcher
    from moray.controlplane.scanner.progress import TerminalProgress
    from moray.controlplane.store.scanstore import ScanStore

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".oci")
SEVERITIES = [str(s) for s in Severity]  # unknown < low < ... < critical
DEFAULT_MAX_AGE_DAYS = 7.0
IMPORT_HINT = "import advisories with 'moray vulndb import PATH' (docs/scanner.md)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``moray scan IMAGE``."""
    p.add_argument("image", help="OCI layout dir, docker/OCI archive, or registry reference")
    p.add_argument("-f", "--format",
                   choices=["table", "json", "sarif", "cyclonedx", "spdx-json"],
                   default="table")
    p.add_argument("-o", "--output", type=Path, help="write the report here (default stdout)")
    p.add_argument("--fail-on", choices=SEVERITIES,
                   help="exit 1 if a finding at this severity or above is found: "
                   "vulnerabilities, secrets, malware, hostile layer entries, configuration "
                   "('unknown' counts vulnerabilities no source rates, i.e. every finding)")
    p.add_argument("--fixable-only", action="store_true",
                   help="with --fail-on: count only vulnerabilities that have a fix")
    p.add_argument("--policy", type=Path, help="image assurance policy (YAML)")
    p.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                   help="vulnerability store (default $MORAY_DATA_DIR/moray.db)")
    p.add_argument("--no-vulns", action="store_true", help="skip vulnerability matching")
    p.add_argument("--max-vulndb-age", type=float, metavar="DAYS",
                   default=float(os.environ.get("MORAY_VULNDB_MAX_AGE", DEFAULT_MAX_AGE_DAYS)),
                   help="exit 2 when the last vulnerability import is older than this "
                   f"($MORAY_VULNDB_MAX_AGE, default {DEFAULT_MAX_AGE_DAYS:g}; 0: no limit)")
    p.add_argument("--allow-stale-vulndb", action="store_true",
                   help="scan even with a missing, empty or stale vulnerability store "
                   "(a warning instead of exit 2)")
    p.add_argument("--no-secrets", action="store_true")
    p.add_argument("--secret-config", type=Path, metavar="FILE",
                   help="YAML file adding secret rules and allow rules, or turning built-in "
                   "ones off (see docs/scanner.md)")
    p.add_argument("--no-malware", action="store_true")
    p.add_argument("--malware-all-files", action="store_true",
                   help="run the malware rules and hashes over every file, not only those "
                   "that can carry malware (executables, scripts, start-up files; "
                   "docs/scanner.md)")
    p.add_argument("--no-cache", action="store_true", help="do not use the per-layer cache")
    p.add_argument("--yara-rules", type=Path, action="append", default=[])
    p.add_argument("--malware-hashes", type=Path, action="append", default=[])
    p.add_argument("--ref", help="image name inside a multi-image layout or archive")
    p.add_argument("--insecure-registry", action="store_true",
                   help="allow plain HTTP, only to a loopback registry")
    p.add_argument("--username", default=os.environ.get("MORAY_REGISTRY_USERNAME"))
    p.add_argument("--password", default=os.environ.get("MORAY_REGISTRY_PASSWORD"))
    add_client_options(p, server_help="match vulnerabilities on moray-server's knowledge "
                       "base instead of the local store ($MORAY_SERVER); only package names "
                       "and versions are sent")
    p.add_argument("--record-verdict", action="store_true",
                   help="store the policy verdict for the image digest in the store")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress line (drawn on a terminal for scans over 2 s) and no "
                   "scanner warnings on stderr")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)


def open_image(args: argparse.Namespace) -> ImageSource:
    path = Path(args.image)
    if path.exists():
        return open_source(path, args.ref)
    if args.image.startswith(("/", "./", "../")) or args.image.endswith(LOCAL_SUFFIXES):
        raise ImageFormatError("no such image file or directory", source=args.image)
    # imported here: urllib.request/http.client/ssl are only needed for registry images
    from moray.controlplane.scanner.engine.registry import RegistrySource, parse_reference

    ref = parse_reference(args.image)
    return RegistrySource(ref, insecure=args.insecure_registry,
                          username=args.username, password=args.password)


def _progress(enabled: bool) -> TerminalProgress | None:
    if not enabled:
        return None
    from moray.controlplane.scanner.progress import TerminalProgress

    delay = float(os.environ.get("MORAY_PROGRESS_DELAY", "2"))
    return TerminalProgress(sys.stderr, delay=delay)


def policy_from_args(args: argparse.Namespace) -> AssurancePolicy | None:
    if not args.policy and not args.fail_on:
        return None
    from moray.controlplane.scanner.engine.policy import AssurancePolicy, load_policy

    if args.policy:
        return load_policy(args.policy)
    return AssurancePolicy(name="cli", fail_on=Severity(args.fail_on),
                           fixable_only=args.fixable_only)


def open_store(args: argparse.Namespace, config: ClientConfig) -> ScanStore | None:
    """The store, when this scan needs it: local vulnerability matching or --record-verdict.
    The layer cache is a file of its own (controlplane.scanner.engine.cache), so a scan without
    either never opens the store."""
    if (args.no_vulns or config.server) and not args.record_verdict:
        return None
    from moray.controlplane.store.scanstore import ScanStore, default_db_path

    path = args.db or default_db_path()
    if not args.record_verdict and not path.exists():
        # a read: opening would create the file and its directory (and migrate an empty
        # schema into it)
        _no_vulndb(args, f"no vulnerability store at {path}")
        return None
    return ScanStore(path)


def _no_vulndb(args: argparse.Namespace, why: str) -> None:
    """Exit 2 (ScanError) unless --allow-stale-vulndb, which only warns."""
    if not args.allow_stale_vulndb:
        raise VulnDataError(f"{why}; {IMPORT_HINT}, or scan with --no-vulns or "
                            "--allow-stale-vulndb")
    log.warning("%s; vulnerabilities may be missed (--allow-stale-vulndb)", why)


def check_vulndb(args: argparse.Namespace, status: dict[str, Any], where: str,
                 clock: Callable[[], float] = time.time) -> None:
    """Fail (exit 2) on an empty store or one whose last import is older than
    --max-vulndb-age days. ``status``: ``moray vulndb status`` of the local store or of
    the server (``--server``)."""
    if not status.get("advisories"):
        _no_vulndb(args, f"the vulnerability store {where} is empty")
        return
    last = status.get("last_import")
    age = args.max_vulndb_age
    if age > 0 and last is not None and clock() - float(last["at"]) > age * 86400:
        days = (clock() - float(last["at"])) / 86400
        _no_vulndb(args, f"the vulnerability data in {where} was last imported "
                   f"{days:.1f} days ago (--max-vulndb-age {age:g})")


def vuln_matcher(args: argparse.Namespace, config: ClientConfig, store: ScanStore | None
                 ) -> VulnMatcher | None:
    if args.no_vulns:
        return None
    if config.server:
        if not config.token:
            raise ScanError("--server needs --token or $MORAY_TOKEN")
        from moray.controlplane.scanner.service.remote import RemoteMatcher

        remote = RemoteMatcher(config.server, config.token, client=config.http_client())
        check_vulndb(args, remote.status(), f"of {config.server}")
        return remote
    if store is None:
        return None
    from moray.controlplane.vulndb.matcher import Matcher

    status = store.status()
    check_vulndb(args, status, str(status["path"]))
    return Matcher(store)


def scan_options(args: argparse.Namespace, matcher: VulnMatcher | None) -> ScanOptions:
    malware = None
    if not args.no_malware:
        from moray.controlplane.scanner.engine.malware import MalwareScanner, discover

        rules, hashes = discover(data_dir())
        malware = MalwareScanner([*rules, *args.yara_rules], [*hashes, *args.malware_hashes],
                                 all_files=args.malware_all_files)
    secrets = None
    if not args.no_secrets:
        if args.secret_config:
            from moray.controlplane.scanner.engine.secretconfig import load_secret_config

            secrets = load_secret_config(args.secret_config)
        else:
            from moray.controlplane.scanner.engine.secrets import SecretScanner

            secrets = SecretScanner()
    return ScanOptions(
        secrets=secrets,
        malware=malware,
        cache=None if args.no_cache else FileLayerCache(default_cache_path()),
        matcher=matcher,
        progress=_progress(not args.quiet and sys.stderr.isatty()),
    )


def run_command(args: argparse.Namespace) -> int:
    """The handler of ``moray scan IMAGE``: 0 passed, 1 failed the policy; errors raise.
    With -q the engine's warnings (skipped entries, hostile entries: both in the report)
    are not logged; the gate's own notes still are."""
    engine = logging.getLogger("moray.controlplane.scanner.engine")
    level = engine.level
    if args.quiet:
        engine.setLevel(logging.ERROR)
    try:
        return run(args, from_args(args))
    finally:
        engine.setLevel(level)


def run(args: argparse.Namespace, config: ClientConfig) -> int:
    policy = policy_from_args(args)
    store = open_store(args, config)
    try:
        return _run(args, config, policy, store)
    finally:
        if store is not None:
            store.close()


def _run(args: argparse.Namespace, config: ClientConfig, policy: AssurancePolicy | None,
         store: ScanStore | None) -> int:
    options = scan_options(args, vuln_matcher(args, config, store))
    source = open_image(args)
    try:
        result: ScanResult = scan_image(source, options, image_name=args.image)
    finally:
        finish = getattr(options.progress, "finish", None)
        if finish is not None:
            finish()  # the progress line is erased before the report is written
        close = getattr(source, "close", None)
        if close is not None:
            close()
        if isinstance(options.cache, FileLayerCache):
            options.cache.close()
    verdict = None
    if policy is not None:
        from moray.controlplane.scanner.engine.policy import evaluate, record_verdict

        verdict = evaluate(result, policy)
        if store is not None and args.record_verdict:
            record_verdict(store, result, policy)
        _note_unrated(result, policy)
    text = render(result, args.format, verdict)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return FAILED if verdict is not None and not verdict[0] else OK


def _note_unrated(result: ScanResult, policy: AssurancePolicy) -> None:
    """Say so when vulnerabilities no source rates were not counted by the gate."""
    if policy.fail_on is None or policy.fail_on is Severity.UNKNOWN:
        return
    unrated = sorted({v.id for v in result.vulnerabilities if v.severity is Severity.UNKNOWN
                      and v.id not in policy.ignore and (v.fixable or not policy.fixable_only)})
    if unrated:
        sys.stderr.write(
            f"note: {len(unrated)} vulnerabilities have no severity from any source and were "
            f"not counted by fail-on {policy.fail_on} ({', '.join(unrated[:5])}"
            f"{', ...' if len(unrated) > 5 else ''}); fail-on unknown counts them, and "
            "importing NVD records rates most (docs/scanner.md)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``moray-scan``: ``moray scan IMAGE`` under its own name (moray.cli)."""
    from moray.cli import main as moray

    return moray(argv, alias="moray-scan")


if __name__ == "__main__":
    sys.exit(main())
