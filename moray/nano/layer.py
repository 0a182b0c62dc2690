"""The Lambda layer: a zip that AWS extracts under ``/opt``.

    moray-nano                      the exec wrapper (AWS_LAMBDA_EXEC_WRAPPER=/opt/moray-nano)
    moray-nano.d/sitecustomize.py   imported by Python's site at start: installs the hook
    moray-nano.d/moray/__init__.py  a stub package (the layer ships the enforcer only)
    moray-nano.d/moray/nano/...     the standard-library-only modules (RUNTIME_MODULES)
    moray-nano.d/policy.json        the compiled function policy

``moray-nano.d`` is on ``PYTHONPATH`` only through the wrapper, so a function without
``AWS_LAMBDA_EXEC_WRAPPER`` is not changed by the layer (and ``/opt/python``, the layers'
import directory, gets nothing that could shadow the function's modules). The same tree
unpacked anywhere (a container image's ``/opt``) works the same way.

The zip is reproducible: fixed timestamps and modes, entries in a fixed order.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from . import boot

LIB = "moray-nano.d"
WRAPPER = "moray-nano"
RUNTIME_MODULES = ("__init__.py", "rules.py", "events.py", "hook.py", "boot.py")
_EPOCH = (1980, 1, 1, 0, 0, 0)

WRAPPER_SCRIPT = """#!/bin/sh
# moray nano: the AWS_LAMBDA_EXEC_WRAPPER of a Python function (docs/nano.md).
# The runtime starts this with its own command line; it puts the enforcer's directory
# first on PYTHONPATH (Python's site then imports its sitecustomize, which installs the
# audit hook before the runtime imports the handler) and runs that command unchanged.
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
MORAY_NANO_HOME="${MORAY_NANO_HOME:-$here/moray-nano.d}"
export MORAY_NANO_HOME
export PYTHONPATH="$MORAY_NANO_HOME${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
exec "$@"
"""

SITECUSTOMIZE = '''"""moray nano: installs the function policy's audit hook (moray.nano.boot)
before the runtime imports the handler; stops the process if the policy cannot be used."""

from moray.nano import boot

boot.main()
'''

STUB_INIT = '''"""moray (the NanoEnforcer's layer ships moray.nano's runtime modules only)."""
'''


def _add(z: zipfile.ZipFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = zipfile.ZipInfo(name, _EPOCH)
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, data)


def files(compiled: dict[str, Any]) -> list[tuple[str, bytes, int]]:
    """(name, content, mode) of every entry of the layer."""
    here = Path(__file__).parent
    out = [(WRAPPER, WRAPPER_SCRIPT.encode(), 0o755),
           (f"{LIB}/sitecustomize.py", SITECUSTOMIZE.encode(), 0o644),
           (f"{LIB}/moray/__init__.py", STUB_INIT.encode(), 0o644)]
    out += [(f"{LIB}/moray/nano/{m}", (here / m).read_bytes(), 0o644) for m in RUNTIME_MODULES]
    out.append((f"{LIB}/{boot.POLICY_FILE}",
                (json.dumps(compiled, indent=1, sort_keys=True) + "\n").encode(), 0o644))
    return out


def build(out: Path, compiled: dict[str, Any]) -> list[str]:
    """Write the layer zip to ``out``; the entry names."""
    entries = files(compiled)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        for name, data, mode in entries:
            _add(z, name, data, mode)
    tmp.replace(out)
    return [e[0] for e in entries]


def unpack(zip_path: Path, dest: Path) -> None:
    """Extract a layer as Lambda does (modes kept): for tests and container images."""
    with zipfile.ZipFile(zip_path) as z:
        for info in z.infolist():
            if info.filename.startswith("/") or ".." in info.filename.split("/"):
                raise ValueError(f"{zip_path}: entry {info.filename!r} outside the layer")
            target = dest / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
            target.chmod((info.external_attr >> 16) & 0o777)


__all__ = ["LIB", "RUNTIME_MODULES", "WRAPPER", "build", "files", "unpack"]
