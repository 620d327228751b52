"""Regenerate the Python stubs of every ``.proto`` under ``protos/ipjms`` (run: ``make protos``).

The stubs are committed; ``tests/exchange/test_protos_current.py`` regenerates them into a
temporary folder and fails if they differ, so CI catches a proto edited without regenerating.

protoc writes imports relative to the proto root (``from ipjms.exchange.v1 import …``); we
rewrite them to the package path (``from protos.ipjms.exchange.v1 import …``) so the stubs import
as ``protos.ipjms.exchange.v1.exchange_pb2`` from anywhere.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
_IMPORT = re.compile(r"^from ipjms\.(\S+) import (\S+_pb2)", re.MULTILINE)


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted((root / "ipjms").rglob("*.proto"))


def generate(out_dir: Path = PROTO_ROOT, root: Path = PROTO_ROOT) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` for each proto into ``out_dir``."""
    from grpc_tools import protoc  # dev dependency (grpcio-tools)

    out_dir.mkdir(parents=True, exist_ok=True)
    protos = proto_files(root)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(root)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written: list[Path] = []
    for proto in protos:
        rel = proto.relative_to(root).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = out_dir / rel.parent / (rel.name + suffix)
            path.write_text(_IMPORT.sub(r"from protos.ipjms.\1 import \2", path.read_text()))
            written.append(path)
        # Each folder of the generated tree is a package.
        folder = out_dir / rel.parent
        while folder != out_dir:
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text("")
            folder = folder.parent
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=PROTO_ROOT, help="output root (default: protos/)"
    )
    ns = parser.parse_args(argv)
    for path in generate(ns.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
