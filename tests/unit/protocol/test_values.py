"""protocol.values: the one int, flag and shape check and the one quote of a caller's value,
shared by the protocol and the server (the same mistake reads the same everywhere)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.values import MAX_INDEX, MAX_RANK, check_flag, check_shape, dims, is_int, quote, relay


def test_an_int_is_integral_and_not_a_bool() -> None:
    assert is_int(3) and is_int(np.int64(3)) and is_int(2**80)
    assert not any(is_int(v) for v in (True, 3.0, "3", None, np.float32(3)))


def test_a_flag_is_a_bool_only() -> None:
    assert check_flag(True, "jit") is True and check_flag(False, "jit") is False
    for bad in (0, 1, "true", None):
        with pytest.raises(InvalidArgument, match="jit must be true or false"):
            check_flag(bad, "jit")


@pytest.mark.parametrize("shape", [[], [0], (2, 3), np.array([4, 5]), [MAX_INDEX]])
def test_shapes(shape: Any) -> None:
    assert check_shape(shape) == tuple(int(d) for d in shape)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ("23", "sequence of non-negative ints"),
        (5, "sequence of non-negative ints"),
        ([2, -1], "sequence of non-negative ints"),
        ([2, True], "sequence of non-negative ints"),
        ([2.0], "sequence of non-negative ints"),
        ([1] * (MAX_RANK + 1), "at most 64 dimensions"),
        ([MAX_INDEX + 1], "over 2\\*\\*63 - 1"),
    ],
)
def test_bad_shapes_name_what_they_are(shape: Any, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        check_shape(shape, "model.params[0]: 'shape'")
    assert info.value.message.startswith("model.params[0]: 'shape'")


def test_quotes_are_short_and_say_the_size() -> None:
    assert quote("abc") == "'abc'" and quote([1, 2]) == "[1, 2]"
    assert quote("x" * 1000, 10) == "'xxxxxxxxx... (1000 characters)"
    assert quote(b"y" * 1000, 5) == "b'yyy... (1000 bytes)"
    assert quote({"k": list(range(10**6))}).endswith("... (1 item)")
    nested: Any = []
    for _ in range(10_000):
        nested = [nested]
    assert len(quote(nested)) < 120  # no recursion past what is shown


def test_dims_and_relay() -> None:
    assert dims([1, 2]) == "[1, 2]" and dims(range(20), 2) == "[0, 1, ... 18 more]"
    long = "z" * 5000
    message = relay(f"unknown thing {long!r}; known: a, b", long)
    assert message == f"unknown thing {quote(long)}; known: a, b"
    assert relay(f"unknown thing {quote(long)}", long) == f"unknown thing {quote(long)}"  # quoted already
    assert len(relay("w" * 10_000)) < 700
