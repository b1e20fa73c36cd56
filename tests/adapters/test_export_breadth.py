"""The exporter on models written the way real packages write them (HF-style Llama, CLIP and
Mamba code, nnx RMSNorms; written here, nothing downloaded): key-independent parameters
(``jnp.ones(shape)``, ``jnp.ones(s) * value``, ``jnp.full``, literals), initializer arguments
computed with jnp and ``nn.remat`` are followed; what cannot be is listed, every leaf with
its construct, and a partial export serves the rest. Each plan is realised over both
transports (gRPC and HTTP, in process) and compared byte for byte with Flax's ``model.init``
and ``jax.jit(model.init)``: ``jit`` as a first-class choice (the plan's default, overridden
per call), said in the file's metadata."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from flax.traverse_util import flatten_dict
from in_process import ready_service

import jaxinit
import jaxinit.flax
from helpers import assert_same_model_file
from jaxinit.protocol import safetensors
from jaxinit_server.core import Limits, Service
from jaxinit_server.grpc.server import create_grpc_server
from jaxinit_server.rest.app import create_app

# --- models, as the packages write them -------------------------------------------------------


class LlamaRMSNorm(nn.Module):  # transformers' FlaxLlamaRMSNorm (Mistral's and Gemma's are the same)
    dim: int
    eps: float = 1e-6
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.weight = self.param("weight", lambda _, shape: jnp.ones(shape), self.dim)

    def __call__(self, x: Any) -> Any:
        variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return jnp.asarray(self.weight, self.dtype) * x * jax.lax.rsqrt(variance + self.eps)


class BF16Norm(nn.Module):  # a norm whose scale is kept in bfloat16
    dim: int

    @nn.compact
    def __call__(self, x: Any) -> Any:
        scale = self.param("scale", lambda _, shape, dtype: jnp.full(shape, 0.5, dtype), (self.dim,), jnp.bfloat16)
        return x * scale


class LlamaBlock(nn.Module):
    dim: int
    hidden: int

    @nn.compact
    def __call__(self, x: Any) -> Any:
        init = nn.initializers.normal(0.02)  # config.initializer_range, as HF writes it
        h = LlamaRMSNorm(self.dim, name="input_layernorm")(x)
        q = nn.Dense(self.dim, use_bias=False, kernel_init=init, name="q_proj")(h)
        k = nn.Dense(self.dim, use_bias=False, kernel_init=init, name="k_proj")(h)
        v = nn.Dense(self.dim, use_bias=False, kernel_init=init, name="v_proj")(h)
        att = jax.nn.softmax(q @ k.swapaxes(-1, -2) / jnp.sqrt(self.dim)) @ v
        x = x + nn.Dense(self.dim, use_bias=False, kernel_init=init, name="o_proj")(att)
        h = LlamaRMSNorm(self.dim, name="post_attention_layernorm")(x)
        # a stddev computed with jnp (a traced value while Flax traces init)
        scaled = nn.initializers.normal(stddev=jnp.sqrt(1.0 / self.hidden))
        up = nn.Dense(self.hidden, use_bias=False, kernel_init=init, name="up_proj")(h)
        return x + nn.Dense(self.dim, use_bias=False, kernel_init=scaled, name="down_proj")(nn.silu(up))


class LlamaStyle(nn.Module):
    vocab: int = 64
    dim: int = 16
    hidden: int = 40
    layers: int = 2
    gradient_checkpointing: bool = False
    logit_scale_init_value: float = 2.6592  # CLIP's

    @nn.compact
    def __call__(self, tokens: Any) -> Any:
        x = nn.Embed(self.vocab, self.dim, embedding_init=nn.initializers.normal(0.02), name="embed_tokens")(tokens)
        block = nn.remat(LlamaBlock) if self.gradient_checkpointing else LlamaBlock  # HF's remat
        for i in range(self.layers):
            x = block(self.dim, self.hidden, name=f"layers_{i}")(x)
        x = LlamaRMSNorm(self.dim, name="norm")(x)
        x = BF16Norm(self.dim, name="bf16_norm")(x)
        logit_scale = self.param("logit_scale", lambda _, shape: jnp.ones(shape) * self.logit_scale_init_value, (1,))
        # key-independent, not one value: a literal in the plan (Mamba's A_log is written so)
        a_log = self.param(
            "A_log", lambda _, s: jnp.log(jnp.tile(jnp.arange(1, s[1] + 1, dtype=jnp.float32), (s[0], 1))), (3, 4)
        )
        x = x * logit_scale + a_log.sum()
        return nn.Dense(self.vocab, kernel_init=nn.initializers.normal(0.02), name="lm_head")(x)


class MambaStyle(nn.Module):
    """What is refused: a parameter derived from a draw, one from a key the module makes, a
    literal over the limit, one made outside self.param; the rest is served."""

    dim: int = 8

    @nn.compact
    def __call__(self, x: Any) -> Any:
        def dt_init(rng: Any, shape: Any) -> Any:  # mamba's dt_bias: a draw, then exp and the inverse softplus
            dt = jnp.exp(jax.random.uniform(rng, shape) * (jnp.log(0.1) - jnp.log(0.001)) + jnp.log(0.001))
            dt = jnp.clip(dt, 1e-4)
            return dt + jnp.log(-jnp.expm1(-dt))

        dt_bias = self.param("dt_bias", dt_init, (self.dim,))
        held = self.param("held", lambda _, s: jax.random.normal(jax.random.key(3), s), (self.dim,))
        big = self.param("big", lambda _, s: jnp.arange(s[0], dtype=jnp.float32), (5000,))
        w = self.variable("params", "w", lambda: jnp.ones((self.dim, self.dim)))
        d = self.param("D", lambda _, s: jnp.ones(s), (self.dim,))
        y = nn.Dense(self.dim, name="in_proj")(x) * d + dt_bias + held + big[: self.dim]
        return y @ w.value


class NnxRMSNorm(nnx.Module):
    def __init__(self, dim: int) -> None:
        self.scale = nnx.Param(jnp.ones(dim))
        self.bias = nnx.Param(jnp.zeros(dim))


class NnxBlock(nnx.Module):
    def __init__(self, dim: int, rngs: nnx.Rngs) -> None:
        self.norm = NnxRMSNorm(dim)
        self.up = nnx.Linear(dim, 2 * dim, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        stddev = jnp.sqrt(1.0 / (2 * dim))
        self.down = nnx.Linear(2 * dim, dim, kernel_init=nnx.initializers.normal(stddev), rngs=rngs)
        self.gain = nnx.Param(jnp.full((dim,), 0.25))

    @nnx.remat
    def __call__(self, x: Any) -> Any:  # remat changes no key: at construction it is not even run
        return self.down(nnx.relu(self.up(self.norm.scale * x)))


class NnxModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(32, 8, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.blocks = nnx.List([NnxBlock(8, rngs) for _ in range(2)])
        self.a_log = nnx.Param(jnp.log(jnp.arange(1, 5, dtype=jnp.float32)))


class NnxMamba(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.in_proj = nnx.Linear(4, 4, rngs=rngs)
        dt = jnp.exp(jax.random.uniform(rngs.params(), (4,)) * 2 - 5)
        self.dt_bias = nnx.Param(dt + jnp.log(-jnp.expm1(-dt)))
        self.D = nnx.Param(jnp.ones(4))
        key = jax.random.key(7)  # a key the module makes itself
        self.held = nnx.Param(jax.random.normal(key, (4,)))


# --- Flax's own answers ----------------------------------------------------------------------


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {".".join(str(k) for k in path): np.asarray(v) for path, v in flatten_dict(tree).items()}


def _linen(model: nn.Module, seed: int, jit: bool, *inputs: Any) -> dict[str, np.ndarray]:
    init = jax.jit(model.init) if jit else model.init
    return _flat(nn.meta.unbox(init(jax.random.key(seed), *inputs)["params"]))


def _nnx(cls: Any, seed: int, jit: bool) -> dict[str, np.ndarray]:
    def make(key: Any) -> Any:
        return nnx.to_pure_dict(nnx.state(cls(nnx.Rngs(params=key)), nnx.Param))

    return _flat((jax.jit(make) if jit else make)(jax.random.key(seed)))


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    wrong = [n for n in want if got[n].dtype != want[n].dtype or got[n].tobytes() != want[n].tobytes()]
    assert not wrong, wrong


# --- servers, in this process ----------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with ready_service(Limits(max_tensor_bytes=2**26)) as service:
        yield service


@pytest.fixture(scope="module")
def grpc_url(service: Service) -> Iterator[str]:
    """A grpc.aio server of ``service`` on port 0, its loop on a thread: the blocking client talks to it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[Any, int]:
        server, port, _ = create_grpc_server(service, "127.0.0.1", 0)
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(60)
        loop.close()


@pytest.fixture(scope="module")
def app(service: Service) -> Any:
    return create_app(service)


@pytest.fixture(params=["grpc", "http"])
def realise(request: pytest.FixtureRequest, grpc_url: str, app: Any) -> Any:
    """``realise(plan, seed, **init_model_kwargs)``: the blocking client over gRPC, or the
    async client over HTTP (ASGI)."""

    def over_grpc(plan: Any, seed: int, **kwargs: Any) -> Any:
        with jaxinit.Client(grpc_url, shared_memory=False) as client:
            return client.init_model(plan, seed, flat=True, **kwargs)

    def over_http(plan: Any, seed: int, **kwargs: Any) -> Any:
        async def work() -> Any:
            transport = httpx.ASGITransport(app=app)
            async with jaxinit.AsyncClient("http://in-process", transport=transport) as client:
                return await client.init_model(plan, seed, flat=True, **kwargs)

        return asyncio.run(work())

    return over_grpc if request.param == "grpc" else over_http


def _arrays(params: Any) -> dict[str, np.ndarray]:
    return {name: np.asarray(a) for name, a in params.items()}


TOKENS = jax.ShapeDtypeStruct((1, 5), jnp.int32)


# --- jit, a first-class choice ---------------------------------------------------------------


_LLAMA: dict[tuple[bool, bool], dict[str, np.ndarray]] = {}


def _llama(remat: bool, jit: bool) -> dict[str, np.ndarray]:
    """LlamaStyle's ``model.init`` (seed 4), or its jax.jit, made once for both transports."""
    if (remat, jit) not in _LLAMA:
        model = LlamaStyle(gradient_checkpointing=remat)
        _LLAMA[remat, jit] = _linen(model, 4, jit, jnp.zeros((1, 5), jnp.int32))
    return _LLAMA[remat, jit]


@pytest.mark.parametrize("remat", [False, True])
def test_a_llama_style_model_is_model_init_and_its_jit(realise: Any, remat: bool) -> None:
    model = LlamaStyle(gradient_checkpointing=remat)
    plan = jaxinit.flax.export(model, TOKENS)
    by_path = {e["path"]: e for e in plan["params"]}
    norm = next(e for p, e in by_path.items() if p.endswith("input_layernorm.weight"))
    assert norm["initializer"] == "ones" and norm["dtype"] == "float32"
    assert by_path["bf16_norm.scale"]["initializer"] == "constant"
    assert by_path["bf16_norm.scale"]["args"] == {"value": 0.5} and by_path["bf16_norm.scale"]["dtype"] == "bfloat16"
    assert by_path["logit_scale"]["args"] == {"value": float(np.float32(2.6592))}
    assert by_path["A_log"]["args"]["value"][2] == np.log(np.arange(1, 5, dtype=np.float32)).tolist()
    down = next(e for p, e in by_path.items() if p.endswith("down_proj.kernel"))
    assert down["args"] == {"stddev": float(jnp.sqrt(1.0 / 40))}
    eager, jitted = _llama(remat, False), _llama(remat, True)
    assert any(eager[n].tobytes() != jitted[n].tobytes() for n in eager)  # jit matters for this model
    if remat:  # remat changes no parameter
        _same(eager, _llama(False, False))
    got = realise(plan, 4)
    _same(_arrays(got), eager)
    assert got.metadata["jit"] == "false"
    got = realise(plan, 4, jit=True)
    _same(_arrays(got), jitted)
    assert got.metadata["jit"] == "true"


def test_remat_changes_no_parameter_nor_the_plan() -> None:
    """HF's gradient_checkpointing=True: the blocks named as without it, the same plan."""
    assert jaxinit.flax.export(LlamaStyle(gradient_checkpointing=True), TOKENS) == jaxinit.flax.export(
        LlamaStyle(), TOKENS
    )

    class Unnamed(nn.Module):  # linen names an unnamed remat block by its class: CheckpointLlamaBlock_0
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.remat(LlamaBlock)(4, 8)(x)

    x = jnp.zeros((1, 3, 4))
    plan = jaxinit.flax.export(Unnamed(), x)
    assert {e["path"].split(".")[0] for e in plan["params"]} == {"CheckpointLlamaBlock_0"}
    want = _linen(Unnamed(), 8, False, x)
    assert sorted(e["path"] for e in plan["params"]) == sorted(want)


def test_a_plan_exported_with_jit_gives_jit_unless_a_call_says_otherwise(realise: Any) -> None:
    model = LlamaStyle(layers=1)
    plan = jaxinit.flax.export(model, TOKENS, jit=True)
    assert plan["jit"] is True
    x = jnp.zeros((1, 5), jnp.int32)
    got = realise(plan, 11)
    _same(_arrays(got), _linen(model, 11, True, x))
    assert got.metadata["jit"] == "true"
    got = realise(plan, 11, jit=False)
    _same(_arrays(got), _linen(model, 11, False, x))
    assert got.metadata["jit"] == "false"


def test_the_rest_download_says_jit_as_the_client_file_does(app: Any, tmp_path: Any) -> None:
    plan = jaxinit.flax.export(LlamaStyle(layers=1), TOKENS, jit=True)

    async def work() -> tuple[httpx.Response, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as http:
            file = await http.post("/v1/models/init", json={"model": dict(plan), "key": {"seed": 2}})
        async with jaxinit.AsyncClient("http://in-process", transport=httpx.ASGITransport(app=app)) as client:
            params = await client.init_model(plan, 2, path=tmp_path / "m.safetensors")
        return file, params

    file, params = asyncio.run(work())
    assert file.status_code == 200
    arrays, metadata = safetensors.loads(file.content)
    assert metadata["jit"] == "true" and metadata == params.metadata
    assert_same_model_file((tmp_path / "m.safetensors").read_bytes(), file.content)


def test_nnx_constants_jnp_arguments_and_remat(realise: Any) -> None:
    plan = jaxinit.flax.export(NnxModel, mode="nnx")
    by_path = {e["path"]: e for e in plan["params"]}
    assert by_path["blocks.0.norm.scale"]["initializer"] == "ones" and "key" not in by_path["blocks.0.norm.scale"]
    assert by_path["blocks.1.norm.bias"]["initializer"] == "zeros"
    assert by_path["blocks.0.gain"]["args"] == {"value": 0.25}
    assert by_path["a_log"]["initializer"] == "constant"
    _same(_arrays(realise(plan, 5, mode="nnx")), _nnx(NnxModel, 5, False))
    _same(_arrays(realise(plan, 5, mode="nnx", jit=True)), _nnx(NnxModel, 5, True))


# --- refusals: every leaf, with its construct; partial exports -------------------------------


def test_every_refused_linen_leaf_is_listed_with_its_construct() -> None:
    x = jax.ShapeDtypeStruct((1, 8), jnp.float32)
    with pytest.raises(jaxinit.InvalidArgument) as caught:
        jaxinit.flax.export(MambaStyle(), x)
    refused = {r["path"]: r for r in caught.value.refused}
    assert sorted(refused) == ["big", "dt_bias", "held", "w"]
    assert str(caught.value).startswith("4 of 7 parameters cannot be exported exactly")
    assert refused["dt_bias"]["construct"].endswith("dt_init")
    assert "derived from a draw on its key (jax.random.uniform" in refused["dt_bias"]["reason"]
    assert (
        "jax.random.key" in refused["held"]["reason"] and "a key the module makes or holds" in refused["held"]["reason"]
    )
    assert "5000 elements" in refused["big"]["reason"] and "4096" in refused["big"]["reason"]
    assert refused["w"]["construct"] == "self.variable('params', ...) or put_variable"
    assert refused["big"]["shape"] == [5000] and refused["big"]["dtype"] == "float32"
    # a larger literal limit serves the large literal
    with pytest.raises(jaxinit.InvalidArgument) as caught:
        jaxinit.flax.export(MambaStyle(), x, max_literal=5000)
    assert sorted(r["path"] for r in caught.value.refused) == ["dt_bias", "held", "w"]


def test_a_partial_linen_export_serves_the_rest(realise: Any) -> None:
    plan = jaxinit.flax.export(MambaStyle(), jax.ShapeDtypeStruct((1, 8), jnp.float32), partial=True)
    assert sorted(r["path"] for r in plan.refused) == ["big", "dt_bias", "held", "w"]
    want = _linen(MambaStyle(), 6, False, jnp.zeros((1, 8)))
    got = _arrays(realise(plan, 6))
    assert sorted(got) == ["D", "in_proj.bias", "in_proj.kernel"]
    _same(got, {n: want[n] for n in got})


def test_every_refused_nnx_leaf_is_listed_and_a_partial_export_serves_the_rest(realise: Any) -> None:
    with pytest.raises(jaxinit.InvalidArgument) as caught:
        jaxinit.flax.export(NnxMamba, mode="nnx")
    refused = {r["path"]: r for r in caught.value.refused}
    assert sorted(refused) == ["dt_bias", "held"]
    assert "derived from a draw on the parameters' stream (jax.random.uniform" in refused["dt_bias"]["reason"]
    assert refused["held"]["construct"] == "jax.random.key, jax.random.normal"
    plan = jaxinit.flax.export(NnxMamba, mode="nnx", partial=True)
    got = _arrays(realise(plan, 3, mode="nnx"))
    want = _nnx(NnxMamba, 3, False)
    assert sorted(got) == ["D", "in_proj.bias", "in_proj.kernel"]
    _same(got, {n: want[n] for n in got})


def test_an_initializer_argument_computed_from_an_input_is_refused_by_name() -> None:
    class FromInput(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.Dense(3, kernel_init=nn.initializers.normal(stddev=x.std()), name="odd")(x)

    with pytest.raises(jaxinit.InvalidArgument, match=r"odd\.kernel: normal's stddev is computed from a traced"):
        jaxinit.flax.export(FromInput(), jax.ShapeDtypeStruct((1, 4), jnp.float32))


# --- the "every kernel differs" case ---------------------------------------------------------


def test_compare_says_ask_with_jit(grpc_url: str) -> None:
    model = LlamaStyle(layers=1)
    x = jnp.zeros((1, 5), jnp.int32)
    plan = jaxinit.flax.export(model, TOKENS)
    with jaxinit.Client(grpc_url, shared_memory=False) as client:
        eager = client.init_model(plan, 1)
        jitted = client.init_model(plan, 1, jit=True)
    local = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), x)["params"])
    found = jaxinit.flax.compare(local, eager)
    assert not found.same and found.last_bits and found.served_jit is False
    assert "these match jax.jit(model.init)" in str(found) and "ask with jit=True" in str(found)
    assert jaxinit.flax.compare(local, jitted).same
    assert "all" in str(jaxinit.flax.compare(local, jitted))
    other = jaxinit.flax.compare(nn.meta.unbox(model.init(jax.random.key(2), x)["params"]), eager)
    assert not other.last_bits and "another key" in str(other)


# --- the command line ------------------------------------------------------------------------

MODELS = """
import flax.linen as nn
import jax.numpy as jnp


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x * self.param("weight", lambda _, shape: jnp.ones(shape), 4)
        return nn.Dense(3, kernel_init=nn.initializers.normal(0.02))(x)
"""


def test_export_jit_then_model_jit_on_the_command_line(grpc_url: str, tmp_path: Any, monkeypatch: Any) -> None:
    from jaxinit.cli import main

    (tmp_path / "breadth_models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["export", "breadth_models:Net", "--input-shape", "1,4", "--jit", "-o", "plan.json"]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["jit"] is True and plan["params"][0]["initializer"] == "ones"
    from breadth_models import Net  # type: ignore[import-not-found]

    x = jnp.zeros((1, 4))
    for flag, jit in (([], True), (["--no-jit"], False)):
        out = tmp_path / f"out{jit}.safetensors"
        args = ["--url", grpc_url, "model", "plan.json", "--seed", "3", *flag, "-o", str(out), "--no-progress"]
        assert main(args) == 0
        arrays, metadata = safetensors.loads(out.read_bytes())
        assert metadata["jit"] == str(jit).lower()
        _same({n: np.asarray(a) for n, a in arrays.items()}, _linen(Net(), 3, jit, x))


def test_a_key_the_module_draws_itself_is_refused_and_later_keys_stay_right(realise: Any) -> None:
    class OwnKey(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            own = self.param("own", lambda _, s: jax.random.normal(self.make_rng("params"), s), (3,))
            return nn.Dense(3, name="after")(x) + own

    x = jnp.zeros((1, 3))
    plan = jaxinit.flax.export(OwnKey(), x, partial=True)
    assert [r["path"] for r in plan.refused] == ["own"] and "self.make_rng" in plan.refused[0]["reason"]
    # its init function ran once, as in Flax: the keys after it are Flax's
    want = _linen(OwnKey(), 9, False, x)
    got = _arrays(realise(plan, 9))
    _same(got, {n: want[n] for n in ("after.bias", "after.kernel")})


class ScannedBlock(nn.Module):
    @nn.compact
    def __call__(self, x: Any, _: Any) -> Any:
        x = LlamaRMSNorm(4, name="norm")(x)
        a_log = self.param("A_log", lambda _, s: jnp.log(jnp.arange(1, s[0] + 1, dtype=jnp.float32)), (4,))
        return nn.Dense(4, kernel_init=nn.initializers.normal(0.02), name="proj")(x) + a_log, None


class ScannedStack(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        layers = nn.scan(ScannedBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        return layers(name="layers")(x, None)[0]


def test_constants_in_scanned_layers_are_each_layers_value(realise: Any) -> None:
    x = jnp.zeros((1, 4))
    plan = jaxinit.flax.export(ScannedStack(), x)
    by_path = {e["path"]: e for e in plan["params"]}
    assert by_path["layers.norm.weight"]["initializer"] == "ones" and by_path["layers.norm.weight"]["shape"] == [3, 4]
    assert np.asarray(by_path["layers.A_log"]["args"]["value"]).shape == (3, 4)
    _same(_arrays(realise(plan, 2)), _linen(ScannedStack(), 2, False, x))
