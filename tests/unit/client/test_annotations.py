"""Signatures show types, not strings: the catalog's methods (each client's returning its own
initializer class, a choice as the Literal of its choices), and every public function and
method of the package, as help() and inspect.signature show them."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterator
from typing import Any

import pytest

import jaxinit
from jaxinit.protocol import CATALOG


def _quoted(signature: inspect.Signature) -> list[str]:
    annotations = [p.annotation for p in signature.parameters.values()] + [signature.return_annotation]
    return [a for a in annotations if isinstance(a, str)]


@pytest.mark.parametrize(
    ("client_class", "returns"),
    [(jaxinit.Client, jaxinit.Initializer), (jaxinit.AsyncClient, jaxinit.AsyncInitializer)],
)
def test_catalog_methods_have_real_annotations(client_class: type, returns: type) -> None:
    client = client_class("http://127.0.0.1:1")
    for spec in CATALOG.values():
        if spec.kind != "factory":
            assert inspect.signature(getattr(client, spec.name)).parameters.keys() == {"key", "shape", "dtype"}
            continue
        signature = inspect.signature(getattr(client, spec.name))
        assert not _quoted(signature), (spec.name, signature)
        assert signature.return_annotation is returns
        for arg in spec.arguments:
            annotation = signature.parameters[arg.name].annotation
            if arg.choices:
                assert typing.get_origin(annotation) is typing.Literal
                assert typing.get_args(annotation) == arg.choices
    assert str(inspect.signature(client.lecun_normal)).startswith("(in_axis: int | collections.abc.Sequence[int] = -2")


def _public_callables() -> Iterator[tuple[str, Any]]:
    from jaxinit import models

    for name in jaxinit.__all__:
        value = getattr(jaxinit, name)
        if inspect.isfunction(value):
            yield name, value
        elif isinstance(value, type):
            for member, _ in inspect.getmembers(value, inspect.isfunction):
                if not member.startswith("_") or member in ("__init__", "__call__"):
                    yield f"{name}.{member}", getattr(value, member)
    for name in models.__all__:
        value = getattr(models, name)
        if inspect.isfunction(value):
            yield f"models.{name}", value


def test_every_public_signature_has_real_annotations() -> None:
    quoted = {name: _quoted(inspect.signature(f)) for name, f in _public_callables()}
    assert len(quoted) > 40
    assert not {name: q for name, q in quoted.items() if q}


def test_each_client_names_what_its_calls_return() -> None:
    sync, asynchronous = inspect.signature(jaxinit.Client.generate), inspect.signature(jaxinit.AsyncClient.generate)
    assert sync.return_annotation is jaxinit.Tensor
    assert typing.get_args(asynchronous.return_annotation)[-1] is jaxinit.Tensor
    model = inspect.signature(jaxinit.Client.init_model).return_annotation
    assert model is jaxinit.ModelParams
    assert inspect.signature(jaxinit.Client("http://127.0.0.1:1").zeros).return_annotation is not str
