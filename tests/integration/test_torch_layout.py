"""The PyTorch layout: the REST .safetensors loads into the equivalent torch model
(load_state_dict, strict), whose forward pass equals Flax's apply."""

from __future__ import annotations

import math
import pathlib
from typing import Any

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
F = torch.nn.functional

from flax_models import BLOCK, CNN, MLP, LinenBlock, LinenCNN, LinenMLP  # noqa: E402

from helpers import assert_same_model_file  # noqa: E402


class TorchMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.Dense_0 = torch.nn.Linear(12, 32)
        self.Dense_1 = torch.nn.Linear(32, 16)
        self.Dense_2 = torch.nn.Linear(16, 10, bias=False)

    def forward(self, x: Any) -> Any:
        return self.Dense_2(F.relu(self.Dense_1(F.relu(self.Dense_0(x)))))


class TorchCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.Conv_0 = torch.nn.Conv2d(3, 8, 3, padding="same")
        self.GroupNorm_0 = torch.nn.GroupNorm(4, 8, eps=1e-6)  # Flax's default epsilon
        self.Conv_1 = torch.nn.Conv2d(8, 16, 3, padding="same", groups=2)
        self.BatchNorm_0 = torch.nn.BatchNorm2d(16, eps=1e-5)
        self.Dense_0 = torch.nn.Linear(16, 10)

    def forward(self, x: Any) -> Any:
        x = x.permute(0, 3, 1, 2)  # Flax is NHWC, torch NCHW
        x = F.relu(self.GroupNorm_0(self.Conv_0(x)))
        x = F.relu(self.BatchNorm_0(self.Conv_1(x)))
        return self.Dense_0(x.mean(dim=(2, 3)))


class TorchAttention(torch.nn.Module):
    """Flax's MultiHeadAttention: query/key/value to (heads, head_dim), softmax(q k / sqrt(d)) v, out."""

    def __init__(self, features: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = torch.nn.Linear(features, features)
        self.key = torch.nn.Linear(features, features)
        self.value = torch.nn.Linear(features, features)
        self.out = torch.nn.Linear(features, features)

    def forward(self, x: Any) -> Any:
        b, n, f = x.shape
        q, k, v = (layer(x).view(b, n, self.heads, f // self.heads) for layer in (self.query, self.key, self.value))
        weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q / math.sqrt(q.shape[-1]), k), dim=-1)
        return self.out(torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, f))


class TorchBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.Embed_0 = torch.nn.Embedding(50, 32)
        self.LayerNorm_0 = torch.nn.LayerNorm(32, eps=1e-6)
        self.MultiHeadAttention_0 = TorchAttention(32, 4)
        self.RMSNorm_0 = torch.nn.RMSNorm(32, eps=1e-6)
        self.Dense_0 = torch.nn.Linear(32, 64)
        self.Dense_1 = torch.nn.Linear(64, 32)
        self.head = torch.nn.Linear(32, 16)

    def forward(self, tokens: Any) -> Any:
        x = self.Embed_0(tokens)
        x = x + self.MultiHeadAttention_0(self.LayerNorm_0(x))
        x = x + self.Dense_1(F.gelu(self.Dense_0(self.RMSNorm_0(x)), approximate="tanh"))
        return self.head(x).view(*x.shape[:-1], 2, 8)


CASES = {
    "mlp": (MLP, LinenMLP, TorchMLP, lambda rng: rng.standard_normal((3, 12)).astype(np.float32)),
    "cnn": (CNN, LinenCNN, TorchCNN, lambda rng: rng.standard_normal((2, 8, 8, 3)).astype(np.float32)),
    "block": (BLOCK, LinenBlock, TorchBlock, lambda rng: rng.integers(0, 50, (2, 5)).astype(np.int32)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_safetensors_loads_into_torch_and_matches_flax_apply(server: Any, tmp_path: pathlib.Path, case: str) -> None:
    description, linen_cls, torch_cls, make_input = CASES[case]
    seed = 17
    response = httpx.post(
        f"{server.http_url}/v1/models/init",
        json={"model": description, "key": {"seed": seed}, "layout": "torch"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    path = tmp_path / "params.safetensors"
    path.write_bytes(response.content)

    model = torch_cls()
    model.load_state_dict(safetensors_torch.load_file(str(path)), strict=True)
    model.eval()

    x = make_input(np.random.default_rng(0))
    variables = linen_cls().init(jax.random.key(seed), jnp.asarray(x))
    want = np.asarray(linen_cls().apply(variables, jnp.asarray(x)))
    with torch.no_grad():
        got = model(torch.from_numpy(x).long() if x.dtype == np.int32 else torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_client_writes_the_same_file(server: Any, tmp_path: pathlib.Path) -> None:
    import jaxinit

    path = tmp_path / "mlp.safetensors"
    with jaxinit.Client(server.grpc_url) as client:
        client.init_model(MLP, 5, layout="torch", path=path)
    response = httpx.post(
        f"{server.http_url}/v1/models/init", json={"model": MLP, "key": {"seed": 5}, "layout": "torch"}, timeout=120
    )
    assert_same_model_file(path.read_bytes(), response.content)  # same tensors, order and metadata
    loaded = safetensors_torch.load_file(str(path))
    assert loaded["Dense_0.weight"].shape == (32, 12)
