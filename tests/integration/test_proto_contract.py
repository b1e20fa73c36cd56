"""The wire contract for other languages: every message, field, RPC and oneof of
proto/jaxinit/v1/jaxinit.proto documented; `buf lint` (STANDARD, exceptions argued in
buf.yaml) clean; `buf breaking` clean against the last release's image, and shown to
catch a breaking change. buf comes from npm (@bufbuild/buf), pinned here."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "jaxinit" / "v1" / "jaxinit.proto"
RELEASE = ROOT / "proto" / "releases" / "jaxinit-0.1.0.binpb"
BUF_VERSION = "1.75.0"
REQUIRED = os.environ.get("JAXINIT_REQUIRE_SYSTEM_TOOLS") == "1"  # CI: a missing npm fails


@pytest.fixture(scope="module")
def buf() -> str:
    """buf from npm, installed once into .cache/buf."""
    prefix = ROOT / ".cache" / "buf"
    binary = prefix / "node_modules" / ".bin" / "buf"
    if binary.exists() and subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip() == (
        BUF_VERSION
    ):
        return str(binary)
    if shutil.which("npm") is None:
        if REQUIRED:
            pytest.fail("npm is needed for buf (apt-get install npm)")
        pytest.skip("npm is not installed: buf lint/breaking not run")
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "npm",
            "install",
            "--prefix",
            str(prefix),
            "--no-audit",
            "--no-fund",
            "--silent",
            f"@bufbuild/buf@{BUF_VERSION}",
        ],
        check=True,
        timeout=600,
    )
    return str(binary)


def _buf(buf: str, *args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([buf, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.release
def test_buf_lint_is_clean(buf: str) -> None:
    result = _buf(buf, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.release
def test_no_breaking_change_since_the_last_release(buf: str) -> None:
    result = _buf(buf, "breaking", "--against", str(RELEASE))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.release
def test_buf_breaking_catches_a_renumbered_field(buf: str, tmp_path: pathlib.Path) -> None:
    """The check can fail: the same contract with GenerateRequest.dtype moved from field 5."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    changed = tmp_path / "proto" / "jaxinit" / "v1" / "jaxinit.proto"
    changed.parent.mkdir(parents=True)
    text = PROTO.read_text()
    assert text.count("  string dtype = 5;\n") == 1
    changed.write_text(text.replace("  string dtype = 5;\n", "  string dtype = 15;\n"))
    result = _buf(buf, "breaking", "--against", str(RELEASE), cwd=tmp_path)
    assert result.returncode != 0
    assert "GenerateRequest" in result.stdout and "5" in result.stdout, result.stdout


def _locations(tmp_path: pathlib.Path) -> tuple[descriptor_pb2.FileDescriptorProto, dict[tuple[int, ...], str]]:
    """The file's descriptor and, by source path, the comments protoc saw."""
    out = tmp_path / "jaxinit.binpb"
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", "--include_source_info", f"--descriptor_set_out={out}"]
    assert protoc.main([*args, "jaxinit/v1/jaxinit.proto"]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (file,) = files.file
    comments = {
        tuple(location.path): (location.leading_comments + location.trailing_comments).strip()
        for location in file.source_code_info.location
    }
    return file, comments


def test_every_message_field_rpc_and_oneof_is_documented(tmp_path: pathlib.Path) -> None:
    file, comments = _locations(tmp_path)
    missing: list[str] = []

    def need(path: tuple[int, ...], name: str) -> None:
        if not comments.get(path):
            missing.append(name)

    def message(proto: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        name = f"{prefix}{proto.name}"
        need(path, name)
        for i, field in enumerate(proto.field):
            need(path + (2, i), f"{name}.{field.name}")
        for i, oneof in enumerate(proto.oneof_decl):
            if not oneof.name.startswith("_"):  # proto3 `optional` makes a synthetic oneof
                need(path + (8, i), f"{name}.{oneof.name}")
        for i, nested in enumerate(proto.nested_type):
            if not nested.options.map_entry:
                message(nested, path + (3, i), f"{name}.")

    for i, proto in enumerate(file.message_type):
        message(proto, (4, i), "")
    for i, service in enumerate(file.service):
        need((6, i), service.name)
        for j, method in enumerate(service.method):
            need((6, i, 2, j), f"{service.name}.{method.name}")
    assert not missing, f"undocumented in {PROTO.name}: {missing}"
    options = file.options
    assert options.go_package and options.java_package and options.csharp_namespace
