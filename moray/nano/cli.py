"""``moray nano``: function policies and the Lambda layer (docs/nano.md).

    moray nano check FILE...                 validate function policies (file:line errors)
    moray nano compile FILE [-o OUT.json]    the compiled form the enforcer reads
    moray nano layer OUT.zip --policy FILE   the Lambda layer (wrapper, enforcer, policy)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moray.errors import ValidationError
from moray.exitcodes import FAILED, OK


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray nano``'s parser."""
    assert name == "nano"
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate function policies")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    comp = sub.add_parser("compile", help="print (or write) a policy's compiled JSON")
    comp.add_argument("file", type=Path, metavar="FILE")
    comp.add_argument("-o", "--output", type=Path, default=None, metavar="OUT")
    layer = sub.add_parser("layer", help="build the Lambda layer zip")
    layer.add_argument("output", type=Path, metavar="OUT.zip")
    layer.add_argument("--policy", type=Path, required=True, metavar="FILE",
                       help="the FunctionPolicy (YAML or JSON) baked into the layer")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from moray.nano import layer, policy

    if args.command == "check":
        bad = 0
        for f in args.files:
            try:
                c = policy.compile_file(f)
            except ValidationError as err:
                sys.stdout.write(f"{err}\n")
                bad += 1
                continue
            egress = c["egress"]
            sys.stdout.write(
                f"{f}: ok: {c['name']} ({c['mode']}): exec allow {len(c['exec_allow'])}, "
                f"writable {', '.join(c['writable']) or 'nowhere'}, files.deny "
                f"{len(c['file_deny'])}, egress "
                + ("unrestricted" if egress["allow"] is None else
                   f"allow {len(egress['allow'])} CIDR + {len(egress['hosts'])} names")
                + f", deny {len(egress['deny'])}\n")
        return FAILED if bad else OK
    if args.command == "compile":
        text = json.dumps(policy.compile_file(args.file), indent=1, sort_keys=True) + "\n"
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text)
        return OK
    compiled = policy.compile_file(args.policy)
    names = layer.build(args.output, compiled)
    sys.stdout.write(f"{args.output}: {len(names)} files, policy {compiled['name']} "
                     f"({compiled['mode']}); set AWS_LAMBDA_EXEC_WRAPPER=/opt/"
                     f"{layer.WRAPPER}\n")
    return OK
