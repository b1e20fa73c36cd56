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


def test_nnx_refuses_what_its_einsum_does_not_take(url: str) -> None:
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.InvalidArgument, match="no 'use_bias'"):
        client.init_model(m.Einsum((4, 3), "ab,bc->ac", use_bias=False), 0, mode="nnx")


def test_lora_linear_keeps_its_lora_in_float32_as_flax_does(url: str) -> None:
    """nnx.LoRALinear(param_dtype=bfloat16): kernel and bias bfloat16, lora_a/lora_b in
    lora_param_dtype (Flax's default float32), unless given."""
    import jax.numpy as jnp

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.a = nnx.LoRALinear(4, 3, lora_rank=2, param_dtype=jnp.bfloat16, rngs=rngs)
            self.b = nnx.LoRALinear(4, 3, lora_rank=2, lora_param_dtype=jnp.bfloat16, rngs=rngs)

    want = _flat(nnx.to_pure_dict(nnx.state(Net(nnx.Rngs(2)), nnx.Param)))
    assert want["a.lora.lora_a"].dtype == np.float32 and want["a.kernel"].dtype == jnp.bfloat16
    description = m.Module(
        m.LoRALinear(4, 3, lora_rank=2, param_dtype="bfloat16", name="a"),
        m.LoRALinear(4, 3, lora_rank=2, lora_param_dtype="bfloat16", name="b"),
    )
    with jaxinit.Client(url) as client:
        _same(client.init_model(description, 2, mode="nnx", flat=True), want)


def test_torch_buffers_do_not_turn_x64_on(url: str) -> None:
    """A BatchNorm's int64 num_batches_tracked buffer (torch layout) is a constant, not a
    64-bit parameter: a float32 model keeps x64 off, whatever the seed."""
    model = m.Module(m.Conv(3, 4, (3, 3)), m.BatchNorm(4))
    with jaxinit.Client(url) as client:
        torch_layout = client.init_model(model, -1, layout="torch", flat=True)
        flax_layout = client.init_model(model, -1, flat=True)
    assert not any(p.enable_x64 for p in torch_layout.provenance.values() if p.key_impl)  # buffers are unkeyed
    kernel = flax_layout["Conv_0.kernel"]
    assert torch_layout["Conv_0.weight"].tobytes() == np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)).tobytes()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (m.ConvTranspose(3, 8, (3, 3)), "no PyTorch layout"),
        (m.Einsum((4, 3)), "needs 'einsum_str'"),
        (m.Einsum((4, 3), "ab,bcd->ac"), "one letter per kernel axis"),
        (m.Einsum((4, 3), "ab,bc"), "explicit, as Flax requires"),
        (m.MultiHeadAttention(4, 2, cls="Attention"), "'class' is one of"),
        (m.Einsum((4, 3), "ab,bc->ac", bias_shape=(3,)), "no 'bias_shape'"),
        (m.Einsum((4, 4), "ab,bb->ab"), "must differ"),
        (m.LoRA(4, 2, 3), "an nnx module"),
    ],
)
def test_what_cannot_be_exact_is_refused(url: str, model: dict[str, Any], message: str) -> None:
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.InvalidArgument, match=message):
        client.init_model(model, 0, layout="torch" if model["type"] == "ConvTranspose" else "flax")
