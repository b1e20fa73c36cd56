"""Every model description and plan the README, docs/ and examples/ show passes the JSON
Schema (and the parser): the curl bodies and JSON blocks as written, the descriptions the
Python blocks build with jaxinit.models (each block run with a client that records instead
of sending), and the plan the README exports. (The docs-snippet test runs the same blocks
against a server, through the client, which checks every description with the schema too.)"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any
from unittest import mock

import pytest

import jaxinit
from jaxinit.protocol import schemas
from jaxinit.protocol.expansion import expand

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
BODY = re.compile(r"""-d\s+'(\{.*?\})'""", re.S)  # curl's JSON body


def _blocks(language: str) -> list[tuple[str, str]]:
    return [
        (doc.relative_to(ROOT).as_posix(), code)
        for doc in DOCS
        for lang, code in BLOCK.findall(doc.read_text())
        if lang == language
    ]


def _written() -> list[tuple[str, dict[str, Any], str]]:
    """(where, description, mode) of every description written out as JSON."""
    found = []
    for where, code in _blocks("sh"):
        for body in map(json.loads, BODY.findall(code)):
            if "model" in body:
                found.append((f"{where}: curl body", body["model"], body.get("mode", "linen")))
    for where, code in _blocks("json"):
        document = json.loads(code)
        if isinstance(document, dict) and ("type" in document or "params" in document):
            found.append((f"{where}: json block", document, "linen"))
    for path in sorted((ROOT / "examples").rglob("*.json")):
        if path.name.startswith("package"):
            continue  # npm's
        document = json.loads(path.read_text())
        if isinstance(document, dict) and ("type" in document or "params" in document):
            found.append((path.relative_to(ROOT).as_posix(), document, "linen"))
    return found


def _built() -> list[tuple[str, Any, str]]:
    """(where, description, mode) of every description a Python block builds with
    jaxinit.models and hands to init_model: the block runs with a recording client."""
    found: list[tuple[str, Any, str]] = []

    class Recorder(mock.MagicMock):
        def init_model(self, model: Any, key: Any, *, mode: str = "linen", **_: Any) -> Any:
            found.append((where, model, mode))
            return mock.MagicMock()

    for where, code in _blocks("python"):
        if "jaxinit.models" not in code and "models as m" not in code:
            continue
        with mock.patch.object(jaxinit, "Client", Recorder), mock.patch.object(jaxinit, "AsyncClient", Recorder):
            exec(compile(code, where, "exec"), {"__name__": "doc_block"})
    return found


def test_every_written_description_passes_the_schema_and_the_parser() -> None:
    written = _written()
    assert any("curl body" in where for where, _, _ in written), "the docs' curl example was not found"
    for where, description, mode in written:
        assert schemas.check(description), where
        expand(description, mode=mode)


def test_every_built_description_passes_the_schema_and_the_parser() -> None:
    built = _built()
    assert built, "no Python block of the docs builds a description"
    for where, description, mode in built:
        assert schemas.check(json.loads(json.dumps(description))), where
        expand(description, mode=mode)


def test_the_readmes_exported_plan_passes_both_schemas() -> None:
    """The README's export, up to where it is realised (that part needs a server: the
    docs-snippet test runs it, and the client checks the plan before sending)."""
    pytest.importorskip("flax")
    (code,) = [code for where, code in _blocks("python") if where == "README.md" and "jaxinit.flax.export(" in code]
    namespace: dict[str, Any] = {"__name__": "doc_block"}
    exec(compile(code.split("with open(", 1)[0], "README.md", "exec"), namespace)
    plan = json.loads(json.dumps(namespace["plan"]))
    assert schemas.check(plan, schemas.PLAN) and schemas.check(plan)
    expand(plan)
