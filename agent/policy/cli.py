"""`moray agent policy lint|apply|list|delete` and `moray agent unload` (local mode; the
same as `moray-agent policy ...`, `moray-agent unload`).

The running agent watches its policy directory (engine.py); these commands validate and
place files there atomically, and read the status the agent writes after each publish.
Output to stdout is this command's result; diagnostics go to logging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from moray.agent.bpf.pins import unload
from moray.agent.policy.compile import CompileError, compile_policies
from moray.agent.policy.engine import DEFAULT_POLICY_DIR, DEFAULT_STATUS
from moray.api.policy.load import PolicyError, load_dir, load_file, policy_files
from moray.api.policy.model import Policy
from moray.exitcodes import FAILED


def _lint(args: argparse.Namespace) -> int:
    rc = 0
    for f in args.files:
        try:
            pols = load_file(f)
            compiled = compile_policies(list(enumerate(pols)))
        except PolicyError as err:
            print(err, file=sys.stderr)
            rc = FAILED
            continue
        except CompileError as err:
            print(f"{f}: {err}", file=sys.stderr)
            rc = FAILED
            continue
        for p in pols:
            print(f"{f}: {p.name}: ok ({p.mode}, {p.rule_count()} rules)")
        _exec_warnings(f, pols, ["/", *(args.image_root or [])])
        if args.rows:
            print(json.dumps(compiled.to_json(), indent=2))
    return rc


def _exec_warnings(f: str, pols: list[Policy], roots: list[str]) -> None:
    """Warnings about exec rules (agent/policy/lint_exec.py): printed, never a failure."""
    from moray.agent.policy.lint_exec import exec_warnings, line_of

    try:
        lines = Path(f).read_text().splitlines()
    except OSError:
        lines = []
    for p in pols:
        for w in exec_warnings(p, roots):
            n = line_of(lines, w.text)
            print(f"{f}:{n or '?'}: warning: {p.name}: {w.field}: {w.text}: {w.message}",
                  file=sys.stderr)


def _apply(args: argparse.Namespace) -> int:
    src = Path(args.file)
    try:
        pols = load_file(src)
        current, _errors = load_dir(args.policy_dir)
        others = [p for p in current if p.source != str(Path(args.policy_dir) / src.name)
                  and p.name not in {q.name for q in pols}]
        compile_policies(list(enumerate(others + pols)))
    except PolicyError as err:
        print(err, file=sys.stderr)
        return FAILED
    except CompileError as err:
        print(f"{src}: {err}", file=sys.stderr)
        return FAILED
    dest_dir = Path(args.policy_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    # one file per policy name: replacing a policy replaces its file
    for p in pols:
        for f in policy_files(dest_dir):
            if f.name != src.name and any(q.name == p.name for q in _safe_load(f)):
                f.unlink()
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".", suffix=src.suffix)
    with os.fdopen(fd, "w") as out:
        out.write(src.read_text())
    os.replace(tmp, dest_dir / src.name)
    for p in pols:
        print(f"{p.name}: applied to {dest_dir / src.name} ({p.mode}, {p.rule_count()} rules)")
    return 0


def _safe_load(f: Path) -> list[Policy]:
    try:
        return list(load_file(f))
    except PolicyError:
        return []


def _list(args: argparse.Namespace) -> int:
    pols, errors = load_dir(args.policy_dir)
    status: dict[str, object] = {}
    with contextlib.suppress(OSError, ValueError):  # no agent has published yet
        status = json.loads(Path(args.status).read_text())
    live = {p["name"]: p for p in status.get("policies", [])  # type: ignore[attr-defined]
            } if status else {}
    rows = [{"name": p.name, "mode": str(p.mode), "rules": p.rule_count(),
             "file": p.source, "live": p.name in live and live[p.name]["digest"] == p.digest[:12],
             "slot": live[p.name]["slot"] if p.name in live else None} for p in pols]
    if args.json:
        print(json.dumps({"policies": rows, "errors": [str(e) for e in errors],
                          "agent": status or None}, indent=2))
        return 0
    print(f"{'NAME':<24}{'MODE':<9}{'RULES':>6}  {'LIVE':<5} FILE")
    for r in rows:
        print(f"{r['name']:<24}{r['mode']:<9}{r['rules']:>6}  {'yes' if r['live'] else 'no':<5} "
              f"{r['file']}")
    for e in errors:
        print(f"invalid: {e}", file=sys.stderr)
    return 0


def _delete(args: argparse.Namespace) -> int:
    found = False
    for f in policy_files(args.policy_dir):
        names = [p.name for p in _safe_load(f)]
        if args.name in names:
            if len(names) > 1:
                print(f"{f} holds {len(names)} policies: edit it instead", file=sys.stderr)
                return FAILED
            f.unlink()
            found = True
            print(f"{args.name}: deleted ({f})")
    if not found:
        print(f"no policy named {args.name!r} in {args.policy_dir}", file=sys.stderr)
        return FAILED
    return 0


def _unload(args: argparse.Namespace) -> int:
    removed = unload(args.pin_root)
    print(f"removed {len(removed)} pins under {args.pin_root}" if removed
          else f"nothing pinned under {args.pin_root}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pol = sub.add_parser("policy", help="runtime policies: lint, apply, list, delete")
    psub = pol.add_subparsers(dest="policy_cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--policy-dir", default=DEFAULT_POLICY_DIR)
    lint = psub.add_parser("lint", help="validate and compile policy files")
    lint.add_argument("files", nargs="+")
    lint.add_argument("--rows", action="store_true", help="print the compiled map rows")
    lint.add_argument("--image-root", action="append", metavar="DIR",
                      help="an unpacked image rootfs to look denied exec paths up in "
                           "(multi-call binaries), besides this host; repeatable")
    lint.set_defaults(handler=_lint)
    ap = psub.add_parser("apply", parents=[common], help="validate, then place in the "
                         "policy directory (the running agent publishes it)")
    ap.add_argument("file")
    ap.set_defaults(handler=_apply)
    ls = psub.add_parser("list", parents=[common], help="policies and whether they are live")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--policy-status", "--status", dest="status", default=DEFAULT_STATUS,
                    help="the status file the running agent writes (its --policy-status)")
    ls.set_defaults(handler=_list)
    rm = psub.add_parser("delete", parents=[common], help="remove a policy by name")
    rm.add_argument("name")
    rm.set_defaults(handler=_delete)
    un = sub.add_parser("unload", help="remove every pinned program and map (stop the "
                        "agent first): enforcement ends")
    un.add_argument("--pin-root", default="/sys/fs/bpf/moray")
    un.set_defaults(handler=_unload)
