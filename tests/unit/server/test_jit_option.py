"""``jit`` is a request option beside the PRNG settings, not one of them: every wire form
reads it there, and still reads its old spelling ``prng.jit``; a request that gives both,
differently, is refused (the adapters' translation, no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from jaxinit.protocol.errors import InvalidArgument
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit_server.core.request import jit_option
from jaxinit_server.grpc.servicer import model_params_from_proto, params_from_proto
from jaxinit_server.rest.schemas import GenerateBody, ModelBody

TENSOR: dict[str, Any] = {"initializer": "normal", "shape": [2, 3], "key": {"seed": 0}}
MODEL: dict[str, Any] = {"model": {"type": "Dense", "in_features": 2, "features": 3}, "key": {"seed": 0}}


def test_the_two_spellings_are_one_option() -> None:
    assert jit_option(None, None) is None
    assert jit_option(True, None) is jit_option(None, True) is jit_option(True, True) is True
    assert jit_option(False, None) is jit_option(None, False) is False
    with pytest.raises(InvalidArgument, match="give jit once"):
        jit_option(False, True)


@pytest.mark.parametrize(
    ("fields", "jit"),
    [({}, False), ({"jit": True}, True), ({"prng": {"jit": True}}, True), ({"jit": False}, False)],
)
def test_rest_bodies_read_jit_in_either_place(fields: dict[str, Any], jit: bool) -> None:
    assert GenerateBody(**TENSOR, **fields).params().jit is jit
    assert ModelBody(**MODEL, **fields).params().jit is jit


def test_rest_bodies_refuse_two_different_jits() -> None:
    for body in (
        GenerateBody(**TENSOR, jit=False, prng={"jit": True}),
        ModelBody(**MODEL, jit=False, prng={"jit": True}),
    ):
        with pytest.raises(InvalidArgument, match="give jit once"):
            body.params()


def test_grpc_messages_read_jit_in_either_place() -> None:
    tensor = {"initializer": "normal", "shape": [2, 3], "key": pb.Key(seed=0)}
    model = {"model_json": '{"type": "Dense", "in_features": 2, "features": 3}', "key": pb.Key(seed=0)}
    for prng, jit, expected in [(None, None, False), (None, True, True), (True, None, True), (True, True, True)]:
        settings = pb.PrngSettings(jit=prng) if prng is not None else None
        assert params_from_proto(pb.GenerateRequest(**tensor, prng=settings, jit=jit)).jit is expected
        assert model_params_from_proto(pb.InitModelRequest(**model, prng=settings, jit=jit)).jit is expected
    with pytest.raises(InvalidArgument, match="give jit once"):
        params_from_proto(pb.GenerateRequest(**tensor, prng=pb.PrngSettings(jit=True), jit=False))
