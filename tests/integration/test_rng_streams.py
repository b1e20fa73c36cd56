"""nnx rng streams as Flax has them: a Dropout given the shared nnx.Rngs, and attention
with dropout, take a count from the stream at construction and shift every later
parameter's key; with separate params/dropout streams they do not. Descriptions that
say so are exact against Flax over both transports; one whose draws cannot be placed is
refused, naming the module."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from flax.traverse_util import flatten_dict

import jaxinit
from jaxinit import models as m


class TutorialCNN(nnx.Module):
    """The nnx MNIST tutorial's model, as the tutorial writes it (one nnx.Rngs(0) for all)."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025, rngs=rngs)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)


def _tutorial(streams: list[str] | None) -> dict[str, Any]:
    model = m.Module(
        m.Conv(1, 32, (3, 3), name="conv1"),
        m.BatchNorm(32, name="batch_norm1"),
        m.Dropout(0.025, rngs=True, name="dropout1"),
        m.Conv(32, 64, (3, 3), name="conv2"),
        m.BatchNorm(64, name="batch_norm2"),
        m.Dense(3136, 256, name="linear1"),
        m.Dropout(0.025, rngs=True, name="dropout2"),
        m.Dense(256, 10, name="linear2"),
    )
    return model if streams is None else {**model, "rng_streams": streams}


class Block(nnx.Module):
    """Attention with dropout and a Dropout between two linears."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=16, dropout_rate=0.1, decode=False, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.up = nnx.Linear(16, 32, rngs=rngs)
        self.quiet = nnx.MultiHeadAttention(
            num_heads=2, in_features=16, dropout_rate=0.1, keep_rngs=False, decode=False, rngs=rngs
        )
        self.down = nnx.Linear(32, 16, rngs=rngs)


def _block(streams: list[str]) -> dict[str, Any]:
    model = m.Module(
        m.MultiHeadAttention(16, 4, dropout_rate=0.1, name="attn"),
        m.Dropout(0.1, rngs=True, name="drop"),
        m.Dense(16, 32, name="up"),
        m.MultiHeadAttention(16, 2, dropout_rate=0.1, keep_rngs=False, name="quiet"),
        m.Dense(32, 16, name="down"),
    )
    return {**model, "rng_streams": streams}


def _flax(module: nnx.Module) -> dict[str, np.ndarray]:
    tree = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    return {".".join(str(k) for k in path): np.asarray(v) for path, v in flatten_dict(tree).items()}


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    wrong = [name for name in want if got[name].tobytes() != want[name].tobytes()]
    assert not wrong, wrong


@pytest.mark.parametrize(
    ("rngs", "streams"),
    [({"default": 0}, ["default"]), ({"params": 0, "dropout": 1}, ["params", "dropout"])],
    ids=["one-shared-stream", "params-and-dropout"],
)
def test_the_nnx_mnist_tutorial_model_is_exact(url: str, rngs: dict[str, int], streams: list[str]) -> None:
    want = _flax(TutorialCNN(rngs=nnx.Rngs(**rngs)))
    with jaxinit.Client(url) as client:
        _same(client.init_model(_tutorial(streams), 0, mode="nnx", flat=True), want)


@pytest.mark.parametrize(
    ("rngs", "streams"),
    [({"default": 3}, ["default"]), ({"params": 3, "dropout": 9}, ["params", "dropout"])],
    ids=["one-shared-stream", "params-and-dropout"],
)
def test_attention_with_dropout_and_a_dropout_take_their_counts(
    url: str, rngs: dict[str, int], streams: list[str]
) -> None:
    want = _flax(Block(rngs=nnx.Rngs(**rngs)))
    with jaxinit.Client(url) as client:
        _same(client.init_model(_block(streams), 3, mode="nnx", flat=True), want)


def test_a_shared_stream_moves_later_keys_and_separate_streams_do_not() -> None:
    """The counts themselves: two Dropouts on nnx.Rngs(0) shift linear1 by one and linear2 by two."""
    from jaxinit.protocol.expansion import expand

    shared = {p.name: p.fold_in for p in expand(_tutorial(["default"]), mode="nnx")}
    separate = {p.name: p.fold_in for p in expand(_tutorial(["params", "dropout"]), mode="nnx")}
    assert separate["linear1.kernel"] == 8 and shared["linear1.kernel"] == 9
    assert separate["linear2.kernel"] == 10 and shared["linear2.kernel"] == 12


def test_a_draw_that_cannot_be_placed_is_refused_naming_the_module(url: str) -> None:
    """Without rng_streams the model's Rngs is taken as one 'params' stream: a Dropout given
    rngs would draw from 'dropout', which it lacks, so Flax itself would raise. Refused."""
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.InvalidArgument) as info:
        client.init_model(_tutorial(None), 0, mode="nnx")
    message = str(info.value)
    assert "model.children[2]: the Dropout" in message and "rng_streams" in message
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.InvalidArgument, match="rng_streams"):
        client.init_model({**_tutorial(None), "rng_streams": "default"}, 0, mode="nnx")


def test_linen_dropout_takes_nothing_at_init(url: str) -> None:
    """linen's nn.Dropout draws its rng when applied, never at init: the same parameters."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.Dense(8)(x)
            x = nn.Dropout(0.5, deterministic=True)(x)
            return nn.Dense(2)(x)

    want = Net().init(jax.random.key(5), np.ones((1, 4), np.float32))["params"]
    flat = {".".join(k): np.asarray(v) for k, v in flatten_dict(want).items()}
    description = m.Module(m.Dense(4, 8), m.Dropout(0.5, rngs=True), m.Dense(8, 2))
    with jaxinit.Client(url) as client:
        _same(client.init_model({**description, "rng_streams": ["default"]}, 5, flat=True), flat)
