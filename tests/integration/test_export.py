"""The exporter: real Flax code traced shape-only into a plan with explicit keys, realised by
the server byte for byte equal to ``model.init``, for Flax's own example models (ResNet-18
and ResNet-50 from examples/imagenet, the lm1b language model, the wmt encoder-decoder, the
nnx MNIST CNN; vendored in tests/flax_examples), a ViT, and a model with nn.scan-stacked
MLP and transformer blocks; any
seed, both PRNG modes, both transports. What it cannot follow is refused by name."""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from flax.core import meta
from flax.traverse_util import flatten_dict
from flax_examples import imagenet_models, lm1b_models, mnist_cnn, wmt_models
from flax_models import LinenScanNet

import jaxinit
import jaxinit.flax


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {".".join(str(k) for k in path): np.asarray(v) for path, v in flatten_dict(tree).items()}


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    wrong = [name for name in want if got[name].tobytes() != want[name].tobytes()]
    assert not wrong, wrong


def _lm_config(**extra: Any) -> Any:
    return lm1b_models.TransformerConfig(
        vocab_size=50,
        output_vocab_size=50,
        emb_dim=16,
        num_heads=2,
        num_layers=2,
        qkv_dim=16,
        mlp_dim=32,
        max_len=32,
        deterministic=True,
        **extra,
    )


def _wmt_config() -> Any:
    return wmt_models.TransformerConfig(
        vocab_size=40, output_vocab_size=40, emb_dim=16, num_heads=2, num_layers=2, qkv_dim=16, mlp_dim=32,
        max_len=32, deterministic=True,
    )  # fmt: skip


class ViT(nn.Module):
    """A small Vision Transformer (as in google-research/vision_transformer): patch embedding
    by a strided Conv, a class token and learned position embeddings made by self.param,
    pre-norm encoder blocks with an MLP whose biases are normal(1e-6)."""

    @nn.compact
    def __call__(self, images: Any) -> Any:
        x = nn.Conv(32, (4, 4), strides=(4, 4), padding="VALID", name="embedding")(images)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
        x = x + self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, h * w + 1, c))
        for i in range(2):
            y = nn.LayerNorm(name=f"block{i}_ln1")(x)
            x = x + nn.MultiHeadDotProductAttention(num_heads=4, name=f"block{i}_attn")(y, y)
            y = nn.LayerNorm(name=f"block{i}_ln2")(x)
            y = nn.Dense(64, bias_init=nn.initializers.normal(stddev=1e-6), name=f"block{i}_mlp_in")(y)
            x = x + nn.Dense(c, kernel_init=nn.initializers.xavier_uniform(), name=f"block{i}_mlp_out")(nn.gelu(y))
        return nn.Dense(10, kernel_init=nn.initializers.zeros, name="head")(nn.LayerNorm(name="encoder_norm")(x[:, 0]))


TOKENS = jax.ShapeDtypeStruct((1, 8), jnp.int32)
IMAGE = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
CASES = {
    "resnet18": (lambda: imagenet_models.ResNet18(num_classes=10), (IMAGE,), {"train": False}),
    "lm1b": (lambda: lm1b_models.TransformerLM(_lm_config()), (TOKENS,), {}),
    "wmt": (lambda: wmt_models.Transformer(_wmt_config()), (TOKENS, TOKENS), {}),
    "vit": (ViT, (IMAGE,), {}),
    "scanned": (LinenScanNet, (jax.ShapeDtypeStruct((1, 6), jnp.int32),), {}),
}  # fmt: skip


_INITS: dict[tuple[str, int, bool], dict[str, np.ndarray]] = {}


def _init(name: str, seed: int) -> dict[str, np.ndarray]:
    """Flax's ``model.init`` of a case, made once per seed and PRNG mode: both transports'
    tests compare with it (an eager init is thousands of dispatches)."""
    memo = (name, seed, bool(jax.config.jax_threefry_partitionable))
    if memo not in _INITS:
        make, inputs, kwargs = CASES[name]
        zeros = [jnp.zeros(x.shape, x.dtype) for x in inputs]
        _INITS[memo] = _flat(meta.unbox(make().init(jax.random.key(seed), *zeros, **kwargs)["params"]))
    return _INITS[memo]


# ResNet-18 (34 s cold under load: an eager init compiles every conv) in the release tier
# with ResNet-50; convs and BatchNorm stay in the default tiers through ViT and test_models.
SLOW = {"resnet18"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.release) if n in SLOW else n for n in sorted(CASES)]
)
def test_exported_flax_examples_are_model_init(url: str, name: str) -> None:
    make, inputs, kwargs = CASES[name]
    plan = jaxinit.flax.export(make(), *inputs, **kwargs)
    json.dumps(plan)  # plain data: a file, a request body
    with jaxinit.Client(url) as client:
        for seed in (0, 2**33 + 5):
            _same(client.init_model(plan, seed, flat=True), _init(name, seed))


@pytest.mark.release  # (25 s cold under load; ResNet-18 and the other examples stay in the default tiers)
def test_exported_resnet50_is_model_init(server: Any) -> None:
    """Flax's ResNet-50 (bottleneck blocks, 25 M parameters), one seed, over gRPC."""
    model = imagenet_models.ResNet50(num_classes=10)
    plan = jaxinit.flax.export(model, IMAGE, train=False)
    want = _flat(model.init(jax.random.key(3), jnp.zeros(IMAGE.shape), train=False)["params"])
    with jaxinit.Client(server.grpc_url) as client:
        _same(client.init_model(plan, 3, flat=True), want)


@pytest.mark.parametrize("partitionable", [True, False])
def test_one_plan_serves_both_prng_modes(url: str, partitionable: bool) -> None:
    """The keys are steps from the root: the plan exported once gives the legacy mode's
    values too, scanned layers included."""
    plan = jaxinit.flax.export(LinenScanNet(), *CASES["scanned"][1])
    with jax.threefry_partitionable(partitionable):
        want = _init("scanned", 4)
    with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
        _same(client.init_model(plan, 4, flat=True), want)


def test_an_exported_plan_in_the_torch_layout(url: str) -> None:
    """Dense kernels transposed, norms' scale as weight, stacked layers one module each,
    a BatchNorm with PyTorch's buffers."""
    want = _init("scanned", 1)
    plan = jaxinit.flax.export(LinenScanNet(), *CASES["scanned"][1])
    stem = jaxinit.flax.export(Stem(), IMAGE)
    with jaxinit.Client(url) as client:
        got = client.init_model(plan, 1, layout="torch", flat=True)
        torch_stem = client.init_model(stem, 1, layout="torch", flat=True)
    assert got["layers.2.up.weight"].tobytes() == np.ascontiguousarray(want["layers.up.kernel"][2].T).tobytes()
    assert got["layers.0.RMSNorm_0.weight"].tobytes() == want["layers.RMSNorm_0.scale"][0].tobytes()
    assert got["Embed_0.weight"].tobytes() == want["Embed_0.embedding"].tobytes()
    flax_stem = _flat(Stem().init(jax.random.key(1), jnp.zeros(IMAGE.shape, IMAGE.dtype))["params"])
    conv = flax_stem["conv_init.kernel"]
    assert torch_stem["conv_init.weight"].tobytes() == np.ascontiguousarray(conv.transpose(3, 2, 0, 1)).tobytes()
    assert torch_stem["bn_init.weight"].tobytes() == flax_stem["bn_init.scale"].tobytes()
    assert torch_stem["bn_init.running_var"].tobytes() == np.ones(16, np.float32).tobytes()


class Stem(nn.Module):
    """ResNet's stem as Flax's example writes it (a bias-free 7x7 conv, BatchNorm): small,
    so that the PyTorch layout's conv and BatchNorm checks compile little."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = nn.Conv(16, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, name="conv_init")(x)
        return nn.relu(nn.BatchNorm(use_running_average=True, name="bn_init")(x))


class Custom(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = nn.Dense(4)(x)
        return nn.Dense(3, kernel_init=lambda key, shape, dtype=jnp.float32: jnp.eye(*shape, dtype=dtype), name="eye")(
            x
        )


class Scaled(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        twice = lambda key, shape, dtype=jnp.float32: 2 * nn.initializers.normal()(key, shape, dtype)  # noqa: E731
        boxed = nn.with_partitioning(nn.initializers.lecun_normal(), ("a", "b"))
        x = nn.Dense(4, kernel_init=boxed, name="boxed")(x)  # a box around the same bytes: fine
        return nn.Dense(3, kernel_init=twice, name="twice")(x)


class Vmapped(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        dense = nn.vmap(nn.Dense, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=0)
        return dense(3)(x)


def test_what_cannot_be_exported_is_refused_by_name() -> None:
    x = jax.ShapeDtypeStruct((1, 5), jnp.float32)
    eye = jaxinit.flax.export(Custom(), x)["params"][2]  # a key-independent value: a literal in the plan
    assert eye["initializer"] == "constant" and eye["args"]["value"] == np.eye(4, 3).tolist()
    with pytest.raises(jaxinit.InvalidArgument, match=r"twice\.kernel: made by Scaled.*<lambda>"):
        jaxinit.flax.export(Scaled(), x)  # it calls a JAX initializer, then changes the values
    with pytest.raises(jaxinit.InvalidArgument, match=r"Dense_0\.kernel: its key comes through a Flax transform"):
        jaxinit.flax.export(Vmapped(), jax.ShapeDtypeStruct((2, 1, 5), jnp.float32))
    with pytest.raises(jaxinit.InvalidArgument, match="a linen Module: export it with mode='linen'"):
        jaxinit.flax.export(Custom(), x, mode="nnx")
    with pytest.raises(jaxinit.InvalidArgument, match="mode is 'linen' or 'nnx'"):
        jaxinit.flax.export(Custom(), x, mode="haiku")


def test_export_makes_no_parameter() -> None:
    """Shape-only: a model of 2**32 float32 parameters (16 GiB) exports without them."""

    class Huge(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.Dense(2**16)(nn.Dense(2**16)(x))  # 2 x 4 Gi elements

    plan = jaxinit.flax.export(Huge(), jax.ShapeDtypeStruct((1, 2**16), jnp.float32))
    assert [p["shape"] for p in plan["params"]] == [[2**16, 2**16], [2**16], [2**16, 2**16], [2**16]]


MY_MODELS = """
import flax.linen as nn

class Block(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, _):
        return nn.LayerNorm()(nn.Dense(self.width, kernel_init=nn.initializers.normal(0.02))(x)), None

class Net(nn.Module):
    width: int = 8
    layers: int = 3

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(10, self.width)(tokens)
        scan = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=self.layers)
        x, _ = scan(self.width, name="layers")(x, None)
        return nn.Dense(10)(x)

from flax import nnx

class NnxNet(nnx.Module):
    def __init__(self, rngs, width=8):
        self.embed = nnx.Embed(10, width, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)
"""


def test_the_export_command_then_the_model_command(server: Any, tmp_path: Any, monkeypatch: Any) -> None:
    """``jaxinit export pkg:Class`` writes the plan; ``jaxinit model plan.json`` (anywhere,
    no JAX needed) realises it, equal to model.init; a target that is no model is refused."""
    import safetensors.numpy

    from jaxinit.cli import main

    (tmp_path / "my_models.py").write_text(MY_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["export", "my_models:Net", "--input-shape", "1,5", "--input-dtype", "int32", "-o", "plan.json"]
    assert main([*argv, "--module-kwargs", '{"layers": 4}']) == 0
    out = tmp_path / "init.safetensors"
    assert main(["--url", server.grpc_url, "model", "plan.json", "--seed", "9", "-o", str(out), "--no-progress"]) == 0
    import my_models

    want = _flat(my_models.Net(layers=4).init(jax.random.key(9), jnp.zeros((1, 5), jnp.int32))["params"])
    _same(safetensors.numpy.load_file(str(out)), want)
    assert want["layers.Dense_0.kernel"].shape == (4, 8, 8)
    nnx_argv = ["export", "my_models:NnxNet", "--mode", "nnx", "--rng-streams", "default", "-o", "nnx.json"]
    assert main([*nnx_argv, "--module-kwargs", '{"width": 6}']) == 0
    nnx_out = tmp_path / "nnx.safetensors"
    assert (
        main(["--url", server.grpc_url, "model", "nnx.json", "--seed", "2", "-o", str(nnx_out), "--no-progress"]) == 0
    )
    _same(safetensors.numpy.load_file(str(nnx_out)), _nnx_params(my_models.NnxNet(nnx.Rngs(2), width=6)))
    assert main(["export", "my_models:nn", "--input-shape", "1,5"]) == 2
    assert main(["export", "my_models", "--input-shape", "1,5"]) == 2


# --- nnx --------------------------------------------------------------------------------------


class NnxTutorial(nnx.Module):
    """The nnx MNIST tutorial's model: Dropout and attention dropout on the shared Rngs."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, 8, 8, decode=False, dropout_rate=0.1, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 10, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def _nnx_params(model: Any) -> dict[str, np.ndarray]:
    return _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("streams", [["default"], ["params", "dropout"]])
def test_exported_nnx_models_are_their_construction(url: str, partitionable: bool, streams: list[str]) -> None:
    """Flax's own MNIST CNN (examples/mnist) and the tutorial's shared-stream model: one
    plan each, any seed, both PRNG modes; with one shared stream the Dropout's and the
    attention's forks shift later keys, with separate streams they do not."""
    for make in (mnist_cnn.CNN, NnxTutorial):
        plan = jaxinit.flax.export(make, mode="nnx", rng_streams=streams)
        with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
            got = client.init_model(plan, 5, flat=True)
        seeds = {"default": 5} if streams == ["default"] else {"params": 5, "dropout": 77}
        with jax.threefry_partitionable(partitionable):
            want = _nnx_params(make(nnx.Rngs(**seeds)))
        _same(got, want)


class NnxCustom(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.ok = nnx.Linear(3, 4, rngs=rngs)
        self.scaled = nnx.Param(2 * nnx.initializers.lecun_normal()(rngs.params(), (4, 4)))


class NnxStacked(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def layers(rngs: nnx.Rngs) -> nnx.Linear:
            return nnx.Linear(4, 4, rngs=rngs)

        self.layers = layers(rngs)


def test_what_cannot_be_exported_from_nnx_is_refused_by_name() -> None:
    with pytest.raises(jaxinit.InvalidArgument, match=r"scaled: computed from the result of a JAX .* changed"):
        jaxinit.flax.export(NnxCustom, mode="nnx")
    with pytest.raises(jaxinit.InvalidArgument, match=r"layers\.(bias|kernel): .*stacked by nnx.vmap"):
        jaxinit.flax.export(NnxStacked, mode="nnx")
    with pytest.raises(jaxinit.InvalidArgument, match="takes no sample inputs"):
        jaxinit.flax.export(NnxCustom, jax.ShapeDtypeStruct((1, 3), jnp.float32), mode="nnx")
    with pytest.raises(jaxinit.InvalidArgument, match="neither 'params' nor 'default'"):
        jaxinit.flax.export(NnxCustom, mode="nnx", rng_streams=["dropout"])


class OffAxis(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        def body(module: Any, carry: Any, _: Any) -> Any:
            return nn.Dense(4)(carry), None

        scan = nn.scan(body, variable_axes={"params": 1}, split_rngs={"params": True}, length=4)
        return scan(self, x, None)[0]


class PutVariable(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        w = self.variable("params", "w", lambda: jnp.ones((5, 2)))
        return nn.Dense(2)(x) + x @ w.value


def test_what_the_linen_exporter_cannot_follow_is_refused() -> None:
    """A scan stacking on another axis than 0 (jaxinit stacks on 0; a square kernel would
    look the same), and a parameter made without self.param."""
    x = jax.ShapeDtypeStruct((1, 4), jnp.float32)
    with pytest.raises(jaxinit.InvalidArgument, match="variable_axes stack on an axis other than 0"):
        jaxinit.flax.export(OffAxis(), x)
    with pytest.raises(jaxinit.InvalidArgument, match=r"1 of 3 parameters .* w: a parameter not made by self.param"):
        jaxinit.flax.export(PutVariable(), jax.ShapeDtypeStruct((1, 5), jnp.float32))
