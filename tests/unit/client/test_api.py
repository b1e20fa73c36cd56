from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

import pytest

import jaxinit

ROOT = pathlib.Path(__file__).resolve().parents[3]


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
    from jaxinit import protocol

    for package in (jaxinit, protocol):
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


@pytest.mark.parametrize(
    ("pyproject", "where"),
    [("pyproject.toml", "client/jaxinit"), ("server/pyproject.toml", "jaxinit_server")],
)
def test_every_package_is_in_its_distribution(pyproject: str, where: str) -> None:
    """Each wheel takes its whole package directory (hatchling's ``packages``), so a new
    subpackage cannot be missing from a wheel (and an image) although an editable install
    finds it; the release tier builds both wheels (tests/integration/test_build_read_only.py)."""
    import tomllib

    wheel = tomllib.loads((ROOT / pyproject).read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel == {"packages": [where]}, wheel
    assert ((ROOT / pyproject).parent / where / "__init__.py").is_file()


def test_one_version() -> None:
    """The client's version is read from jaxinit.protocol; the server distribution states it
    and pins the client to it (a static version: its build cannot import the client)."""
    import tomllib

    import jaxinit_server
    from jaxinit import protocol

    assert jaxinit.__version__ == jaxinit_server.__version__ == protocol.__version__
    assert "version" not in tomllib_project()  # read from jaxinit.protocol, not written twice
    server = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text())["project"]
    assert server["version"] == jaxinit.__version__
    assert f"jaxinit[grpc,dtypes]=={jaxinit.__version__}" in server["dependencies"]


def tomllib_project() -> dict[str, object]:
    import tomllib

    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def test_help_shows_every_argument_of_every_initializer() -> None:
    import inspect

    import jaxinit
    from jaxinit.protocol import CATALOG

    for spec in CATALOG.values():
        if spec.kind != "factory":
            continue
        method = getattr(jaxinit.Client, spec.name)
        doc = inspect.getdoc(method) or ""
        assert spec.source in doc and "bit-identical" in doc, spec.name
        signature = inspect.signature(method)
        for arg in spec.arguments:
            assert f"    {arg.name} ({arg.type}" in doc, (spec.name, arg.name)
            assert all(repr(c) in doc for c in arg.choices), (spec.name, arg.name)
            assert signature.parameters[arg.name].annotation is not inspect.Parameter.empty, (spec.name, arg.name)
