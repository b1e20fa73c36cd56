from __future__ import annotations

import importlib.util
import pathlib
import sys

import jaxinit

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_stubs_are_current(tmp_path: pathlib.Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.generate(tmp_path)
    assert fresh
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.read_text() == path.read_text(), f"{path.name} is stale: run make proto"


def test_public_api_is_pinned() -> None:
    assert sorted(jaxinit.__all__) == sorted([
        "CATALOG", "DTYPE_NAMES", "KEY_IMPLS", "AsyncClient", "AsyncInitializer", "Client", "Initializer",
        "IntegrityError", "InternalError", "Interrupted", "InvalidArgument", "JaxError", "JaxinitError", "Key",
        "ModelParams", "NotAcceptable", "Overloaded",
        "ProtocolError", "Provenance", "Request", "ServerUnavailable", "Tensor", "TooLarge",
        "Unauthenticated", "UnknownDtype", "UnknownInitializer", "__version__", "fold_in", "key", "models",
        "wrap_key_data",
    ])
    for name in jaxinit.__all__:
        assert hasattr(jaxinit, name)
    assert sys.modules["jaxinit"] is jaxinit
