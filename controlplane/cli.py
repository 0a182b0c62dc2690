"""``moray``: administrative commands for the control plane's data.

``moray vulndb import PATH...`` imports advisory files or directories (OSV, Debian
security tracker, Alpine secdb) into the store under ``$MORAY_DATA_DIR``;
``moray vulndb status`` shows what is there; ``moray malware import FILE...`` installs
YARA rule files and SHA-256 lists that moray-scan then loads by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from controlplane.scanner.errors import ScanError
from controlplane.scanner.malware import MalwareScanner
from controlplane.store.scanstore import ScanStore, data_dir, default_db_path
from controlplane.vulndb.importer import import_path

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moray", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, help="store path (default $MORAY_DATA_DIR/moray.db)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="group", required=True)
    vulndb = sub.add_parser("vulndb", help="vulnerability knowledge base")
    vsub = vulndb.add_subparsers(dest="command", required=True)
    imp = vsub.add_parser("import", help="import advisory files or directories")
    imp.add_argument("paths", type=Path, nargs="+")
    st = vsub.add_parser("status", help="what the knowledge base holds")
    st.add_argument("--json", action="store_true")
    malware = sub.add_parser("malware", help="malware rules and hash lists")
    msub = malware.add_subparsers(dest="command", required=True)
    mimp = msub.add_parser("import", help="install .yar/.yara rules or .sha256 lists")
    mimp.add_argument("paths", type=Path, nargs="+")
    return p


def cmd_vulndb_import(store: ScanStore, paths: list[Path]) -> int:
    failed = 0
    for path in paths:
        report = import_path(path, store)
        formats = ", ".join(f"{k} {v}" for k, v in sorted(report.by_format.items()))
        sys.stdout.write(f"{path}: {report.records} records ({formats}), {report.rows} affected "
                         f"rows, {report.skipped} skipped\n")
        for err in report.errors[:20]:
            sys.stdout.write(f"  skipped {err}\n")
        failed += report.skipped
    return 1 if failed else 0


def cmd_vulndb_status(store: ScanStore, as_json: bool) -> int:
    status = store.status()
    if as_json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
        return 0
    sys.stdout.write(f"store: {status['path']}\nadvisories: {status['advisories']}\n"
                     f"affected rows: {status['affected_rows']}\n"
                     f"generation: {status['generation']}\n")
    last = status["last_import"]
    if last:
        sys.stdout.write(f"last import: {last['path']}\n")
    for eco, n in status["by_ecosystem"].items():
        sys.stdout.write(f"  {eco:24} {n}\n")
    sys.stdout.write(f"cached layers: {status['cached_layers']}   verdicts: "
                     f"{status['verdicts']}\n")
    return 0


def cmd_malware_import(paths: list[Path]) -> int:
    target = data_dir() / "malware"
    rules = [p for p in paths if p.suffix in (".yar", ".yara")]
    hashes = [p for p in paths if p.suffix in (".sha256", ".txt")]
    other = set(paths) - set(rules) - set(hashes)
    if other:
        raise ScanError("expected .yar/.yara rule files or .sha256 hash lists",
                        path=", ".join(map(str, sorted(other))))
    MalwareScanner(rules, hashes)  # validate before installing
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in paths:
        shutil.copyfile(p, target / p.name)
        sys.stdout.write(f"installed {p.name} in {target}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.group == "malware":
            return cmd_malware_import(args.paths)
        store = ScanStore(args.db or default_db_path())
        try:
            if args.command == "import":
                return cmd_vulndb_import(store, args.paths)
            return cmd_vulndb_status(store, args.json)
        finally:
            store.close()
    except (ScanError, OSError) as err:
        sys.stderr.write(f"moray: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
