"""The client's received-tensor types: the assembler that collects a streamed tensor, the
check that an answer is for the key and jit asked, and model errors named by tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxinit
from jaxinit.protocol.keys import Key


def test_an_answer_without_the_derive_steps_asked_for_is_refused() -> None:
    """A server older than derive steps drops them (an unknown proto field) and answers for
    the plain key: the client refuses the tensor rather than return other values."""
    from jaxinit._types import check_derived

    key = jaxinit.split(jaxinit.key(3), 4)[1]

    def answer(answered: Key) -> jaxinit.Tensor:
        canonical = json.dumps({"key": answered.to_json()})
        provenance = jaxinit.Provenance(canonical_request=canonical)
        return jaxinit.Tensor(np.zeros(1, np.float32), provenance)

    assert check_derived(key, answer(key)).array.shape == (1,)
    assert check_derived(jaxinit.key(3), answer(jaxinit.key(3)))  # no steps: nothing to check
    with pytest.raises(jaxinit.ProtocolError, match="older than this client"):
        check_derived(key, answer(jaxinit.key(3)))
    model_tensor = answer(jaxinit.fold_in(key, 9))  # a model's tensor: the root's steps, then its own
    assert check_derived(key, model_tensor) is model_tensor
    # jit asked of a server that predates it: it answers eagerly, its canonical request says no jit
    eager = jaxinit.Tensor(np.zeros(1, np.float32), jaxinit.Provenance(canonical_request='{"key": null}'))
    with pytest.raises(jaxinit.ProtocolError, match="eager values where jit values"):
        check_derived(None, eager, jit=True)
    compiled = jaxinit.Tensor(np.zeros(1, np.float32), jaxinit.Provenance(canonical_request='{"jit":true,"key":null}'))
    assert check_derived(None, compiled, jit=True) is compiled


def test_a_named_model_error_keeps_what_it_carries() -> None:
    from jaxinit import Overloaded
    from jaxinit._types import named

    error = Overloaded("busy", retry_after=2.5)
    renamed = named("Dense_0.kernel", error)
    assert isinstance(renamed, Overloaded) and renamed.retry_after == 2.5
    assert renamed.message == str(renamed) == "Dense_0.kernel: busy"
