"""Every snippet of the README, docs/models.md and docs/api.md runs, verbatim but for the
server's address, against a real server, in the order a reader meets them (a file one
block writes, the next reads). What a snippet cannot do here is skipped by name below,
with the reason, never silently."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/models.md", "docs/api.md"]

# Blocks not run here, by a phrase they contain, and why.
NOT_RUN = {
    "make serve": "the set-up commands: CI runs them (.ci/run is `make test`)",
    "pip install . ./server": "set-up: make setup, test_distributions and the thin-client tests install it",
    "constraints-jax.txt": "set-up of an older JAX: test_jax_versions builds it (deploy/jax_versions.py), release tier",
    "tritonclient.http": "tritonclient needs protobuf < 7: tests/integration/test_kserve.py runs it in its own venv",
}
# Blocks that need a module of the release tier's extra (make setup-release): run where it is
# installed; elsewhere the test says which it left out.
NEEDS = {"import torch": "torch"}
# What a snippet leaves implicit (nothing now: docs/models.md's Flax MLP imports what it uses).
PRELUDE: dict[str, str] = {}
# The file `jaxinit model mlp.json` reads in docs/api.md: the MLP of docs/models.md.
MLP_JSON = {
    "type": "Module",
    "children": [
        {"type": "Dense", "in_features": 784, "features": 256},
        {"type": "Dense", "in_features": 256, "features": 10},
    ],
}


def blocks(doc: str) -> list[tuple[str, str]]:
    text = (ROOT / doc).read_text()
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(python|sh)\n(.*?)```", text, re.S)]


def _addresses(code: str, server: Any) -> str:
    return code.replace("http://127.0.0.1:8000", server.http_url).replace("127.0.0.1:50051", server.grpc_target)


@pytest.mark.parametrize("doc", DOCS)
def test_every_snippet_runs(server: Any, tmp_path: pathlib.Path, doc: str) -> None:
    (tmp_path / "mlp.json").write_text(json.dumps(MLP_JSON))
    bin_dir = pathlib.Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # this venv's jaxinit CLI first
        "JAXINIT_URL": server.grpc_url,
    }
    ran, missing = 0, []
    for language, code in blocks(doc):
        if any(phrase in code for phrase in NOT_RUN):
            continue
        needs = [module for phrase, module in NEEDS.items() if phrase in code]
        if any(importlib.util.find_spec(module) is None for module in needs):
            missing.append(code.splitlines()[0])
            continue
        code = _addresses(code, server)
        code = next((p for k, p in PRELUDE.items() if k in code), "") + code
        shell = ["bash", "-euo", "pipefail", "-c", code]
        command = [sys.executable, "-c", code] if language == "python" else shell
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{doc}: this {language} block failed:\n{code}\n{result.stderr[-3000:]}"
        ran += 1
    assert ran, f"{doc}: no snippet ran"
    if missing:
        pytest.skip(f"{doc}: {ran} blocks ran; not run, torch not installed (make setup-release): {missing}")


def test_the_skip_list_names_real_blocks() -> None:
    """A skip whose block is gone is a stale excuse: every phrase must still match a block."""
    every = [code for doc in DOCS for _, code in blocks(doc)]
    for phrase in [*NOT_RUN, *PRELUDE, *NEEDS]:
        assert any(phrase in code for code in every), phrase
