"""Generate the Python stubs for proto/jaxinit/v1/*.proto into client/jaxinit/v1/.

Usage: python scripts/gen_proto.py [OUT_DIR]   (default: client/, i.e. in place)
The generated modules import as ``jaxinit.v1.jaxinit_pb2`` and ``..._pb2_grpc``.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    protos = sorted(PROTO_DIR.glob("jaxinit/v1/*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_DIR)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / "jaxinit" / "v1").glob("*_pb2*"))


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "client"
    for path in generate(out):
        print(path)
