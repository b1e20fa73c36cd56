"""Deliveries (core/delivery.py): what a request asked for, decided in the core; the JSON
and unary caps are the core's."""

from __future__ import annotations

import pytest

from jaxinit.protocol.errors import TooLarge
from jaxinit.protocol.keys import Key
from jaxinit_server.core import GenerateParams, Limits
from jaxinit_server.core.delivery import STREAM, Gathered, Region, delivery_for, gathered_form
from jaxinit_server.core.request import PrngDefaults, resolve


def _resolved(shape: tuple[int, ...]) -> object:
    return resolve(GenerateParams("normal", shape, key=Key(seed=1)), Limits(), PrngDefaults(True, False))


def test_deliveries() -> None:
    assert delivery_for() is STREAM
    json = Gathered(instead="Ask for bytes.")
    assert delivery_for(gathered=json) is json
    region = delivery_for(region_token="t", gathered=json)
    assert region == Region("t", json) and gathered_form(region) is json
    assert gathered_form(STREAM) is None


def test_json_and_unary_caps_are_checked_by_the_core() -> None:
    limits = Limits(max_json_elements=100, max_unary_bytes=64)
    Gathered().check(limits, _resolved((10, 10)))  # type: ignore[arg-type]
    with pytest.raises(TooLarge, match="100 elements and lists; this one has 110. Ask for bytes."):
        Gathered(instead="Ask for bytes.").check(limits, _resolved((10, 11)))  # type: ignore[arg-type]
    with pytest.raises(TooLarge, match="lists"):
        Gathered().check(limits, _resolved((2**10, 0)))  # type: ignore[arg-type]
    Gathered(unary="ModelInfer").check(limits, _resolved((4, 4)))  # type: ignore[arg-type]
    with pytest.raises(TooLarge, match="ModelInfer answers at most 64 bytes"):
        Gathered(unary="ModelInfer").check(limits, _resolved((5, 4)))  # type: ignore[arg-type]
