"""Module types users reach for, byte for byte against Flax over both transports:
ConvTranspose (and transpose_kernel), Einsum (linen's bias read from the equation; nnx's
given), LoRA and LoRALinear (nnx), and linen's automatic names for the attention classes
(SelfAttention_0, MultiHeadDotProductAttention_0)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from flax.traverse_util import flatten_dict

import jaxinit
from jaxinit import models as m


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = nn.ConvTranspose(8, (3, 3))(x)
        x = nn.ConvTranspose(4, (2, 2), transpose_kernel=True)(x)
        y = nn.Einsum((4, 5, 6), "nhwc,cde->nhwde")(x)
        z = nn.Einsum((4, 3), "...c,cd->...d", use_bias=False)(x)
        seq = x.reshape(1, -1, 4)
        a = nn.SelfAttention(num_heads=2)(seq)
        b = nn.MultiHeadDotProductAttention(num_heads=2)(seq)
        c = nn.MultiHeadAttention(num_heads=2)(seq)
        return y.sum() + z.sum() + a.sum() + b.sum() + c.sum()


LINEN = m.Module(
    m.ConvTranspose(3, 8, (3, 3)),
    m.ConvTranspose(8, 4, (2, 2), transpose_kernel=True),
    m.Einsum((4, 5, 6), "nhwc,cde->nhwde"),
    m.Einsum((4, 3), "...c,cd->...d", use_bias=False),
    m.MultiHeadAttention(4, 2, cls="SelfAttention"),
    m.MultiHeadAttention(4, 2, cls="MultiHeadDotProductAttention"),
    m.MultiHeadAttention(4, 2),
)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.up = nnx.ConvTranspose(3, 8, (3, 3), rngs=rngs)
        self.up2 = nnx.ConvTranspose(8, 4, (2, 2), transpose_kernel=True, rngs=rngs)
        self.mix = nnx.Einsum("nhwc,cde->nhwde", (4, 5, 6), (5, 6), rngs=rngs)
        self.nobias = nnx.Einsum("ab,bc->ac", (4, 3), rngs=rngs)
        self.lora = nnx.LoRA(4, 2, 3, rngs=rngs)
        self.lora_linear = nnx.LoRALinear(4, 3, lora_rank=2, rngs=rngs)


NNX = m.Module(
    m.ConvTranspose(3, 8, (3, 3), name="up"),
    m.ConvTranspose(8, 4, (2, 2), transpose_kernel=True, name="up2"),
    m.Einsum((4, 5, 6), "nhwc,cde->nhwde", bias_shape=(5, 6), name="mix"),
    m.Einsum((4, 3), "ab,bc->ac", name="nobias"),
    m.LoRA(4, 2, 3, name="lora"),
    m.LoRALinear(4, 3, lora_rank=2, name="lora_linear"),
)


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {".".join(str(k) for k in path): np.asarray(v) for path, v in flatten_dict(tree).items()}


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    wrong = [name for name in want if got[name].tobytes() != want[name].tobytes()]
    assert not wrong, wrong


def test_linen_conv_transpose_einsum_and_attention_names(url: str) -> None:
    want = _flat(LinenNet().init(jax.random.key(7), np.ones((1, 4, 4, 3), np.float32))["params"])
    assert "SelfAttention_0.query.kernel" in want and "Einsum_0.bias" in want and "Einsum_1.bias" not in want
    with jaxinit.Client(url) as client:
        _same(client.init_model(LINEN, 7, flat=True), want)


def test_nnx_conv_transpose_einsum_lora(url: str) -> None:
    want = _flat(nnx.to_pure_dict(nnx.state(NnxNet(nnx.Rngs(7)), nnx.Param)))
    assert "lora_linear.lora.lora_a" in want and "nobias.bias" not in want
    with jaxinit.Client(url) as client:
        _same(client.init_model(NNX, 7, mode="nnx", flat=True), want)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (m.ConvTranspose(3, 8, (3, 3)), "no PyTorch layout"),
        (m.Einsum((4, 3)), "bias shape from 'einsum_str'"),
        (m.Einsum((4, 3), "ab,bcd->ac"), "one letter per kernel axis"),
        (m.Einsum((4, 3), "ab,bc"), "explicit, as Flax requires"),
        (m.MultiHeadAttention(4, 2, cls="Attention"), "'class' is one of"),
    ],
)
def test_what_cannot_be_exact_is_refused(url: str, model: dict[str, Any], message: str) -> None:
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.InvalidArgument, match=message):
        client.init_model(model, 0, layout="torch" if model["type"] == "ConvTranspose" else "flax")
