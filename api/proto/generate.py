"""Regenerate the Python code for moray.proto (``python -m moray.api.proto.generate``).

The generated modules are committed so that installing moray needs no protoc;
``check()`` regenerates into a temporary directory and compares, and the unit test
``tests/unit/controlplane/test_proto.py`` fails when the committed files are stale.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO = "moray/api/proto/moray.proto"  # through the moray/api link: the import name
GENERATED = ("moray_pb2.py", "moray_pb2.pyi", "moray_pb2_grpc.py")


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) with the repository root as include path, so the
    generated modules import each other as ``moray.api.proto.moray_pb2``."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", str(ROOT / PROTO)]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    for name in GENERATED:
        path = out / "moray" / "api" / "proto" / name
        path.write_text(_HEADER + path.read_text())


# Generated code is not ours to lint or type-check (and `ruff --fix` must not rewrite it).
_HEADER = "# ruff: noqa\n# mypy: ignore-errors\n"


_VERSION_STAMPS = (
    re.compile(r"ValidateProtobufRuntimeVersion\([^)]*\)"),
    re.compile(r"GRPC_GENERATED_VERSION = '[^']*'"),
    re.compile(r"Protobuf Python Version: \S+"),
)


def _normalized(text: str) -> str:
    """The generated text without the generator's version stamps, so a newer grpcio-tools
    on a developer machine does not count as a contract change."""
    for stamp in _VERSION_STAMPS:
        text = stamp.sub("<version>", text)
    return text


def stale() -> list[str]:
    """Names of committed generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "moray" / "api" / "proto"
        return [name for name in GENERATED
                if not (HERE / name).exists()
                or _normalized((HERE / name).read_text()) != _normalized(
                    (fresh / name).read_text())]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in GENERATED:
            (HERE / name).write_bytes((Path(tmp) / "moray" / "api" / "proto" / name).read_bytes())
    print("generated", ", ".join(GENERATED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
