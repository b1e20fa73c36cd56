"""The foreign exceptions a request can cause, named as the domain errors they mean (so no
adapter answers them as an internal error), and everything else left a bug."""

from __future__ import annotations

import pytest

from jaxinit.protocol.errors import (
    InvalidArgument,
    JaxError,
    Overloaded,
    TooLarge,
    mapping_for,
)
from jaxinit_server.core.errors import as_domain_error


@pytest.mark.parametrize("error", [InvalidArgument("bad"), JaxError("jax says no"), Overloaded("busy", retry_after=2)])
def test_a_domain_error_is_itself(error: Exception) -> None:
    assert as_domain_error(error) is error


def test_nesting_past_pythons_stack_is_a_bad_request() -> None:
    error = as_domain_error(RecursionError("maximum recursion depth exceeded"))
    assert type(error) is InvalidArgument and mapping_for(error).http_status == 400
    assert error.message == "the request is nested too deeply to read"


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes."),
        ValueError("XLA: Out of memory allocating a buffer"),
    ],
)
def test_running_out_of_memory_is_too_large(exc: BaseException) -> None:
    error = as_domain_error(exc)
    assert type(error) is TooLarge and mapping_for(error).http_status == 413
    assert "smaller tensor or a range" in error.message


@pytest.mark.parametrize(
    "exc", [ValueError("a bug"), KeyError("x"), AssertionError(), RuntimeError("INTERNAL: something"), TypeError()]
)
def test_anything_else_is_a_bug(exc: BaseException) -> None:
    assert as_domain_error(exc) is None
