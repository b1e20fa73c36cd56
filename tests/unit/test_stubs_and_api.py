from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

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
    """Every public name the package shows is in ``__all__`` and every name in ``__all__``
    resolves (httpx's tests/test_exported_members.py), for the facade and the protocol."""
    import jaxinit.protocol

    for package in (jaxinit, jaxinit.protocol):
        for name in package.__all__:  # loads the lazy names
            assert getattr(package, name) is not None, name
        shown = {
            name
            for name, value in vars(package).items()
            # Submodules the import system set as attributes (jaxinit.v1, jaxinit.cli) are not API.
            if not name.startswith("_") and not (isinstance(value, types.ModuleType) and name not in package.__all__)
        }
        shown -= {"annotations", "importlib", "TYPE_CHECKING", "Any"}  # the module's own imports
        assert shown == set(package.__all__) - {"__version__"}, sorted(shown ^ set(package.__all__))
        assert len(package.__all__) == len(set(package.__all__))
    assert sys.modules["jaxinit"] is jaxinit
