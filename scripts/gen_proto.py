"""Generate the Python stubs: proto/jaxinit/v1/*.proto into client/jaxinit/v1/ (the wire
contract, shared), proto/jaxinit_server/kserve/*.proto into server/jaxinit_server/kserve/
(the KServe v2 protocol, served only).

Usage: python scripts/gen_proto.py [OUT_ROOT]   (default: in place; else OUT_ROOT/client, OUT_ROOT/server)
The generated modules import as ``jaxinit.v1.jaxinit_pb2`` and
``jaxinit_server.kserve.grpc_predict_v2_pb2`` (and their ``_pb2_grpc``).
"""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


# proto folder -> the source root its package lives under
GROUPS = {"jaxinit/v1": "client", "jaxinit_server/kserve": "server"}


# The client's messages load on every protobuf it supports (>= 4.21), not only the
# protoc's own: the runtime-version check protoc writes into a _pb2.py (which refuses any
# older runtime) is taken out. What remains uses the descriptor pool and the builder,
# which protobuf has had since 3.20; jaxinit._grpc checks the installed versions itself
# and names them when they are too old. The server's stubs keep the check.
_VERSION_CHECK = re.compile(
    r"from google\.protobuf import runtime_version as _runtime_version\n|"
    r"_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    .*\n)*?\)\n"
)
_NOTE = "# jaxinit: protoc's runtime-version check removed by scripts/gen_proto.py (see there).\n"


def generate(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Generate every group under ``out_root/<source root>``; returns the files written."""
    written: list[pathlib.Path] = []
    for folder, source_root in GROUPS.items():
        written += _generate(folder, out_root / source_root)
    for path in written:
        if path.parent.name == "v1" and path.name.endswith("_pb2.py"):
            text, removed = _VERSION_CHECK.subn("", path.read_text())
            if removed != 2:
                raise SystemExit(f"{path}: protoc's runtime-version check is not where it was; update gen_proto.py")
            path.write_text(
                text.replace(
                    "# @@protoc_insertion_point(imports)\n", _NOTE + "# @@protoc_insertion_point(imports)\n", 1
                )
            )
    return written


def _generate(folder: str, out_dir: pathlib.Path) -> list[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_DIR.glob(f"{folder}/*.proto"))
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
    return sorted((out_dir / folder).glob("*_pb2*"))


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(out):
        print(path)
