"""A model with jit, made by the core in this process: every tensor chunked or filled (none
runs whole, none compiles per shape) and the bytes are ``jax.jit(model.init)``'s."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import jaxinit.flax
from jaxinit.protocol.keys import Key
from jaxinit_server.core import engine
from jaxinit_server.core.model_init import InitModelParams, resolve_model
from jaxinit_server.core.request import Limits, PrngDefaults


class Block(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        dense = partial(nn.Dense, use_bias=False, kernel_init=nn.initializers.normal(0.02))
        h = nn.RMSNorm(name="input_layernorm")(x)
        x = x + dense(48, name="o_proj")(dense(48, name="q_proj")(h))
        h = nn.LayerNorm(name="post_attention_layernorm")(x)
        return x + nn.Dense(48, name="down_proj")(nn.silu(nn.Dense(136, name="up_proj")(h)))  # lecun_normal


class Small(nn.Module):
    @nn.compact
    def __call__(self, tokens: Any) -> Any:
        x = nn.Embed(1000, 48, name="embed_tokens")(tokens)  # variance_scaling(1, fan_in, normal, out_axis=0)
        for i in range(2):
            x = Block(name=f"layers_{i}")(x)
        return nn.Dense(1000, use_bias=False, kernel_init=nn.initializers.normal(0.02), name="lm_head")(x)


@pytest.mark.parametrize("partitionable", [True, False])
def test_a_model_with_jit_is_jax_jit_of_model_init(partitionable: bool) -> None:
    tokens = jnp.zeros((1, 4), jnp.int32)
    model = Small()
    plan = jaxinit.flax.export(model, jax.ShapeDtypeStruct(tokens.shape, tokens.dtype))
    with jax.threefry_partitionable(partitionable):
        params = jax.jit(model.init)(jax.random.key(3), tokens)["params"]
        eager = model.init(jax.random.key(3), tokens)["params"]
    want = {".".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}
    plain = {".".join(k): np.asarray(v) for k, v in flatten_dict(eager).items()}
    assert any(want[n].tobytes() != plain[n].tobytes() for n in want)  # jit matters for this model
    resolved = resolve_model(
        InitModelParams(model=plan, key=Key(seed=3), jit=True, threefry_partitionable=partitionable),
        Limits(),
        PrngDefaults(True, False),
    )
    got = {}
    for out, request in zip(resolved.outputs, resolved.requests, strict=True):
        made = engine.prepare(request)
        assert made.route in (engine.CHUNKED, engine.FILL), (out.name, made.route)
        got[out.name] = b"".join(np.ascontiguousarray(piece).tobytes() for piece in made.produce())
    assert sorted(got) == sorted(want)
    wrong = [name for name in want if got[name] != want[name].tobytes()]
    assert not wrong, wrong
