"""Stacked layers, byte for byte against Flax over both transports: linen ``nn.scan`` over
an MLP block and over a transformer block (attention, LayerNorm, an MLP with a
``normal(0.02)`` initializer, whose compiled bits differ from eager ones), and nnx layers
made with ``nnx.split_rngs`` + ``nnx.vmap``, with a shared stream and a Dropout inside;
both PRNG modes; the torch layout unstacks the layers as an ``nn.ModuleList`` holds them."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from flax.traverse_util import flatten_dict
from flax_models import LINEN_SCAN, LinenScanNet

import jaxinit
from jaxinit import models as m


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {".".join(str(k) for k in path): np.asarray(v) for path, v in flatten_dict(tree).items()}


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    wrong = [name for name in want if got[name].tobytes() != want[name].tobytes()]
    assert not wrong, wrong


@pytest.mark.parametrize("partitionable", [True, False])
def test_linen_scan_over_mlp_and_transformer_blocks(url: str, partitionable: bool) -> None:
    with jax.threefry_partitionable(partitionable):
        want = _flat(LinenScanNet().init(jax.random.key(3), jnp.zeros((1, 6), jnp.int32))["params"])
    assert want["layers.SelfAttention_0.query.kernel"].shape == (4, 8, 2, 4)
    assert "ScanMlpBlock_0.Dense_0.kernel" in want
    with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
        got = client.init_model(LINEN_SCAN, 3, flat=True)
    _same(got, want)
    jitted = [name for name, p in got.provenance.items() if '"jit":true' in p.canonical_request]
    assert "layers.up.kernel" in jitted and "Embed_0.embedding" not in jitted


def test_linen_scan_in_the_torch_layout_is_a_module_list(url: str) -> None:
    """Each layer its own module, ``layers.<i>.<...>``: layer i's Flax slice, laid out for torch."""
    want = _flat(LinenScanNet().init(jax.random.key(5), jnp.zeros((1, 6), jnp.int32))["params"])
    with jaxinit.Client(url) as client:
        got = client.init_model(LINEN_SCAN, 5, layout="torch", flat=True)
    for i in range(4):
        kernel = want["layers.up.kernel"][i]
        assert got[f"layers.{i}.up.weight"].tobytes() == np.ascontiguousarray(kernel.T).tobytes()
        assert got[f"layers.{i}.LayerNorm_0.weight"].tobytes() == want["layers.LayerNorm_0.scale"][i].tobytes()
    assert got["ScanMlpBlock_0.2.Dense_0.weight"].tobytes() == (
        np.ascontiguousarray(want["ScanMlpBlock_0.Dense_0.kernel"][2].T).tobytes()
    )
    assert not any(name.startswith("layers.4.") for name in got)


class NnxBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.attn = nnx.MultiHeadAttention(2, 8, 8, decode=False, dropout_rate=0.1, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.mlp = nnx.Linear(8, 16, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(11, 8, rngs=rngs)

        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def layers(rngs: nnx.Rngs) -> NnxBlock:
            return NnxBlock(rngs)

        self.layers = layers(rngs)
        self.head = nnx.Linear(16, 5, rngs=rngs)


NNX = m.Module(
    m.Embed(11, 8, name="embed"),
    m.Scan(
        m.Module(
            m.MultiHeadAttention(8, 2, dropout_rate=0.1, name="attn"),
            m.Dropout(0.1, rngs=True, name="drop"),
            m.Dense(8, 16, kernel_init=m.init("normal", stddev=0.02), name="mlp"),
            m.LayerNorm(16, name="norm"),
        ),
        3,
        name="layers",
    ),
    m.Dense(16, 5, name="head"),
)


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("streams", [["default"], ["params", "dropout"]])
def test_nnx_vmap_stacked_layers(url: str, partitionable: bool, streams: list[str]) -> None:
    """One shared stream (the Dropout and the attention's dropout draw inside each layer)
    and separate params/dropout streams."""
    seeds = {"default": 4} if streams == ["default"] else {"params": 4, "dropout": 9}
    with jax.threefry_partitionable(partitionable):
        want = _flat(nnx.to_pure_dict(nnx.state(NnxNet(nnx.Rngs(**seeds)), nnx.Param)))
    assert want["layers.mlp.kernel"].shape == (3, 8, 16)
    with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
        got = client.init_model({**NNX, "rng_streams": streams}, 4, mode="nnx", flat=True)
    _same(got, want)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (m.Scan(m.Scan(m.Dense(2, 2), 2), 2), "a Scan inside a Scan"),
        (m.Scan(m.Dense(2, 2), 0), "length"),
        (m.Scan(m.Dense(2, 2), 5000), "at most 4096"),
        ({"type": "Scan", "length": 2}, "'module'"),  # the client's schema check, or the server: needs the 'module'
    ],
)
def test_what_a_scan_cannot_be_is_refused(url: str, model: dict[str, Any], message: str) -> None:
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.InvalidArgument, match=message):
        client.init_model(model, 0)


def test_unstacking_for_torch_is_bounded_before_it_is_done(url: str) -> None:
    """4096 layers of 30 parameters are 122,880 tensors in the torch layout: refused before
    any is planned (the flax layout keeps 30 stacked tensors)."""
    block = m.Module(*(m.Dense(2, 2, name=f"d{i}") for i in range(15)))
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.InvalidArgument, match="122880 tensors"):
        client.init_model(m.Scan(block, 4096), 0, layout="torch")


class LinenEnsemble(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        dense = nn.vmap(nn.Dense, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=0, out_axes=0)
        x = dense(6, kernel_init=nn.initializers.normal(0.01), name="ensemble")(x)
        return nn.Dense(2)(x)


@pytest.mark.parametrize("partitionable", [True, False])
def test_linen_vmap_ensemble(url: str, partitionable: bool) -> None:
    """nn.vmap-stacked members (an ensemble): the same split keys as nn.scan, plain counts,
    eager values."""
    with jax.threefry_partitionable(partitionable):
        want = _flat(LinenEnsemble().init(jax.random.key(6), jnp.zeros((5, 1, 4)))["params"])
    model = m.Module(
        m.Scan(m.Dense(4, 6, kernel_init=m.init("normal", stddev=0.01)), 5, transform="vmap", name="ensemble"),
        m.Dense(6, 2),
    )
    with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
        _same(client.init_model(model, 6, flat=True), want)
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.InvalidArgument, match="'transform' is one of vmap"):
        client.init_model(m.Scan(m.Dense(2, 2), 2, transform="scan"), 0, mode="nnx")
