"""The catalog is JAX's own API: same names, same signatures, same defaults, same choices."""

from __future__ import annotations

import inspect
import typing

import jax.nn.initializers as jinit
import pytest
from flax import nnx

import jaxinit
from jaxinit.protocol.catalog import CATALOG, bind_arguments, lookup
from jaxinit.protocol.errors import InvalidArgument, UnknownInitializer


def _jax_initializer_names() -> set[str]:
    names = set()
    for name in dir(jinit):
        obj = getattr(jinit, name)
        if not name.startswith("_") and inspect.isfunction(obj):
            names.add(name)
    return names


def _source(name: str) -> object:
    return getattr(nnx.initializers if CATALOG[name].source.startswith("flax") else jinit, name)


def test_catalog_covers_every_jax_and_flax_initializer() -> None:
    flax_names = {n for n in dir(nnx.initializers) if n.endswith("_init")}
    assert set(CATALOG) == _jax_initializer_names() | flax_names


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_signatures_and_defaults_match_the_installed_library(name: str) -> None:
    spec = CATALOG[name]
    target = inspect.signature(_source(name))  # type: ignore[arg-type]
    if spec.kind == "initializer":
        assert list(target.parameters)[:3] == ["key", "shape", "dtype"]
        return
    assert spec.argument_names == tuple(target.parameters)
    for arg in spec.arguments:
        param = target.parameters[arg.name]
        if arg.required:
            assert param.default is inspect.Parameter.empty
        else:
            assert arg.default == param.default, (name, arg.name)


def test_choices_match_jax_literals() -> None:
    hints = typing.get_type_hints(jinit.variance_scaling)
    for arg_name in ("mode", "distribution"):
        literals = {a for lit in typing.get_args(hints[arg_name]) for a in typing.get_args(lit)}
        ours = next(a for a in lookup("variance_scaling").arguments if a.name == arg_name)
        assert set(ours.choices) == literals


@pytest.mark.parametrize("name", sorted(n for n, s in CATALOG.items() if s.kind == "factory"))
def test_client_methods_have_jax_signatures(name: str) -> None:
    client = jaxinit.Client("http://127.0.0.1:9")
    ours = inspect.signature(getattr(client, name)).parameters.values()
    theirs = inspect.signature(_source(name)).parameters.values()  # type: ignore[arg-type]
    assert [(p.name, p.kind, p.default) for p in ours] == [(p.name, p.kind, p.default) for p in theirs]
    client.close()


def test_bind_fills_defaults_and_checks_types() -> None:
    assert bind_arguments(lookup("he_normal"), {"in_axis": (0, 1)}) == {
        "in_axis": [0, 1],
        "out_axis": -1,
        "batch_axis": [],
        "dtype": None,
    }
    with pytest.raises(InvalidArgument, match="must be an int or a sequence of ints"):
        bind_arguments(lookup("he_normal"), {"in_axis": 1.5})
    with pytest.raises(InvalidArgument, match="must be a number"):
        bind_arguments(lookup("normal"), {"stddev": True})
    with pytest.raises(InvalidArgument, match="rectangular"):
        bind_arguments(lookup("constant"), {"value": [[1, 2], [3]]})
    with pytest.raises(UnknownInitializer, match="available"):
        lookup("glorot")
