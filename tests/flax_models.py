"""Example models in Flax (linen and nnx) and their jaxinit descriptions, for the model tests."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx
from flax.traverse_util import flatten_dict

from jaxinit import models as m


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(16, kernel_init=nn.initializers.he_normal())(x))
        return nn.Dense(10, use_bias=False)(x)


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.Dense_0 = nnx.Linear(12, 32, rngs=rngs)
        self.Dense_1 = nnx.Linear(32, 16, kernel_init=nnx.initializers.he_normal(), rngs=rngs)
        self.Dense_2 = nnx.Linear(16, 10, use_bias=False, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        x = nnx.relu(self.Dense_0(x))
        x = nnx.relu(self.Dense_1(x))
        return self.Dense_2(x)


MLP = m.Module(
    m.Dense(12, 32),
    m.Dense(32, 16, kernel_init="he_normal"),
    m.Dense(16, 10, use_bias=False),
)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = nn.Conv(8, (3, 3))(x)
        x = nn.relu(nn.GroupNorm(num_groups=4)(x))
        x = nn.Conv(16, (3, 3), feature_group_count=2)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class NnxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.Conv_0 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.GroupNorm_0 = nnx.GroupNorm(8, num_groups=4, rngs=rngs)
        self.Conv_1 = nnx.Conv(8, 16, (3, 3), feature_group_count=2, rngs=rngs)
        self.BatchNorm_0 = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
        self.Dense_0 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        x = nnx.relu(self.GroupNorm_0(self.Conv_0(x)))
        x = nnx.relu(self.BatchNorm_0(self.Conv_1(x)))
        return self.Dense_0(x.mean(axis=(1, 2)))


CNN = m.Module(
    m.Conv(3, 8, (3, 3)),
    m.GroupNorm(8, num_groups=4),
    m.Conv(8, 16, (3, 3), feature_group_count=2),
    m.BatchNorm(16),
    m.Dense(16, 10),
)


class LinenBlock(nn.Module):
    """A pre-norm transformer block over token embeddings."""

    @nn.compact
    def __call__(self, tokens: Any) -> Any:
        x = nn.Embed(50, 32)(tokens)
        h = nn.MultiHeadAttention(num_heads=4)(nn.LayerNorm()(x))
        x = x + h
        h = nn.Dense(64)(nn.RMSNorm()(x))
        x = x + nn.Dense(32)(nn.gelu(h))
        return nn.DenseGeneral((2, 8), name="head")(x)


class NnxBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.Embed_0 = nnx.Embed(50, 32, rngs=rngs)
        self.LayerNorm_0 = nnx.LayerNorm(32, rngs=rngs)
        self.MultiHeadAttention_0 = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False, rngs=rngs)
        self.RMSNorm_0 = nnx.RMSNorm(32, rngs=rngs)
        self.Dense_0 = nnx.Linear(32, 64, rngs=rngs)
        self.Dense_1 = nnx.Linear(64, 32, rngs=rngs)
        self.head = nnx.LinearGeneral(32, (2, 8), rngs=rngs)


BLOCK = m.Module(
    m.Embed(50, 32),
    m.LayerNorm(32),
    m.MultiHeadAttention(32, num_heads=4),
    m.RMSNorm(32),
    m.Dense(32, 64),
    m.Dense(64, 32),
    m.DenseGeneral(32, (2, 8), name="head"),
)

EXAMPLES = {
    "mlp": (MLP, LinenMLP, NnxMLP, np.ones((2, 12), np.float32)),
    "cnn": (CNN, LinenCNN, NnxCNN, np.ones((2, 8, 8, 3), np.float32)),
    "block": (BLOCK, LinenBlock, NnxBlock, np.ones((2, 5), np.int32)),
}


def flax_params(example: str, mode: str, seed: int) -> dict[str, np.ndarray]:
    """Flax's own init of the example, as {dotted name: array}."""
    _, linen_cls, nnx_cls, x = EXAMPLES[example]
    if mode == "linen":
        tree = linen_cls().init(jax.random.key(seed), jnp.asarray(x))["params"]
    else:
        tree = nnx.to_pure_dict(nnx.state(nnx_cls(nnx.Rngs(seed)), nnx.Param))
    return {".".join(str(k) for k in path): np.asarray(v) for path, v in flatten_dict(tree).items()}


# --- stacked layers (nn.scan) ---------------------------------------------------------------

SMALL = nn.initializers.normal(0.02)


class MlpBlock(nn.Module):
    @nn.compact
    def __call__(self, x: Any, _: Any) -> Any:
        x = nn.Dense(16, kernel_init=SMALL)(x)
        x = nn.Dense(8, use_bias=False)(x)
        return nn.LayerNorm()(x), None


class TransformerBlock(nn.Module):
    @nn.compact
    def __call__(self, x: Any, _: Any) -> Any:
        y = nn.LayerNorm()(x)
        x = x + nn.SelfAttention(num_heads=2, kernel_init=SMALL)(y)
        y = nn.RMSNorm()(x)
        y = nn.Dense(32, name="up")(y)
        x = x + nn.Dense(8, kernel_init=SMALL, name="down")(y)
        return x, None


class LinenScanNet(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = nn.Embed(11, 8, embedding_init=SMALL)(x)
        stack = {"variable_axes": {"params": 0}, "split_rngs": {"params": True}}
        x, _ = nn.scan(MlpBlock, length=3, **stack)()(x, None)
        x, _ = nn.scan(TransformerBlock, length=4, **stack)(name="layers")(x, None)
        return nn.Dense(5)(x)


SCAN_MLP = m.Module(
    m.Dense(8, 16, kernel_init=m.init("normal", stddev=0.02)),
    m.Dense(16, 8, use_bias=False),
    m.LayerNorm(8),
    cls="MlpBlock",
)
SCAN_TRANSFORMER = m.Module(
    m.LayerNorm(8),
    m.MultiHeadAttention(8, 2, cls="SelfAttention", kernel_init=m.init("normal", stddev=0.02)),
    m.RMSNorm(8),
    m.Dense(8, 32, name="up"),
    m.Dense(32, 8, kernel_init=m.init("normal", stddev=0.02), name="down"),
    cls="TransformerBlock",
)
LINEN_SCAN = m.Module(
    m.Embed(11, 8, embedding_init=m.init("normal", stddev=0.02)),
    m.Scan(SCAN_MLP, 3),
    m.Scan(SCAN_TRANSFORMER, 4, name="layers"),
    m.Dense(8, 5),
)
