"""Whole-model init: every parameter equals Flax's own init, byte for byte, in both modes,
over both transports, as the client's dicts, the REST download and the gRPC InitModel stream."""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from flax.traverse_util import flatten_dict
from flax_models import BLOCK, CNN, EXAMPLES, MLP, flax_params  # noqa: E402

import jaxinit
from jaxinit import models as m
from jaxinit.protocol import safetensors as _safetensors
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc


def assert_same(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert sorted(ours) == sorted(reference)
    for name, want in reference.items():
        got = ours[name]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        assert got.tobytes() == want.tobytes(), f"{name} differs from Flax's init"


# --- bit-exactness --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["linen", "nnx"])
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_client_equals_flax_init(url: str, example: str, mode: str) -> None:
    with jaxinit.Client(url) as client:
        for seed in (0, 2**40 + 5):
            got = client.init_model(EXAMPLES[example][0], seed, mode=mode, flat=True)
            assert_same(dict(got), flax_params(example, mode, seed))
            assert all(p.jax_version == jax.__version__ for p in got.provenance.values())


def test_nested_result_and_metadata(server: Any) -> None:
    with jaxinit.Client(server.grpc_url) as client:
        params = client.init_model(MLP, 3)
    assert sorted(params) == ["Dense_0", "Dense_1", "Dense_2"]
    assert sorted(params["Dense_0"]) == ["bias", "kernel"]
    assert params.metadata["jax_version"] == jax.__version__
    assert json.loads(params.metadata["root_key"]) == {"seed": 3, "impl": "threefry2x32"}


def test_sequential_in_both_modes(url: str) -> None:
    desc = m.Sequential(m.Dense(4, 8), m.Function("relu"), m.Dense(8, 3))
    x = jnp.ones((1, 4))
    linen = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)]).init(jax.random.key(5), x)["params"]
    rngs = nnx.Rngs(5)  # one Rngs for the whole model, as nnx users build it
    nnx_model = nnx.Sequential(nnx.Linear(4, 8, rngs=rngs), nnx.relu, nnx.Linear(8, 3, rngs=rngs))
    nnx_tree = nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))
    with jaxinit.Client(url) as client:
        for mode, tree in (("linen", linen), ("nnx", nnx_tree)):
            want = {".".join(str(k) for k in p): np.asarray(v) for p, v in flatten_dict(tree).items()}
            assert_same(dict(client.init_model(desc, 5, mode=mode, flat=True)), want)


def test_bfloat16_params_and_other_key_forms(server: Any) -> None:
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.Dense(6)(x)
            return nn.Dense(8, param_dtype=jnp.bfloat16)(x)

    key = jax.random.key(9, impl="rbg")
    tree = Model().init(key, jnp.ones((1, 4)))["params"]
    want = {".".join(p): np.asarray(v) for p, v in flatten_dict(tree).items()}
    desc = m.Module(m.Dense(4, 6), m.Dense(6, 8, param_dtype="bfloat16"))
    with jaxinit.Client(server.grpc_url) as client:
        got = client.init_model(desc, key, flat=True)  # a JAX key, here with impl rbg
    assert_same(dict(got), want)


def test_fix_rng_separator(server: Any) -> None:
    import flax

    desc = m.Module(m.Module(m.Dense(3, 4), name="ab"), m.Dense(4, 2, name="c"))

    class Inner(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.Dense(4)(x)

    class Outer(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.Dense(2, name="c")(Inner(name="ab")(x))

    flax.config.update("flax_fix_rng_separator", True)
    try:
        tree = Outer().init(jax.random.key(1), jnp.ones((1, 3)))["params"]
    finally:
        flax.config.update("flax_fix_rng_separator", False)
    want = {".".join(p): np.asarray(v) for p, v in flatten_dict(tree).items()}
    with jaxinit.Client(server.http_url) as client:
        assert_same(dict(client.init_model(desc, 1, fix_rng_separator=True, flat=True)), want)
        plain = client.init_model(desc, 1, flat=True)
    assert plain["ab.Dense_0.kernel"].tobytes() != want["ab.Dense_0.kernel"].tobytes()


def test_raw_form_equals_module_form(server: Any) -> None:
    raw = m.raw(
        {"path": "Dense_0.kernel", "initializer": "lecun_normal", "shape": [12, 32]},
        {"path": "Dense_0.bias", "initializer": "zeros", "shape": [32]},
        {"path": "Dense_1.kernel", "initializer": "he_normal", "shape": [32, 16]},
        {"path": "Dense_1.bias", "initializer": "zeros", "shape": [16]},
        {"path": "Dense_2.kernel", "initializer": "lecun_normal", "shape": [16, 10]},
    )
    with jaxinit.Client(server.grpc_url) as client:
        for mode in ("linen", "nnx"):
            assert_same(dict(client.init_model(raw, 0, mode=mode, flat=True)), flax_params("mlp", mode, 0))


def test_fold_in_on_single_tensors(url: str) -> None:
    key = jaxinit.fold_in(jaxinit.fold_in(7, 3), 2**32 - 1)
    want = jax.nn.initializers.lecun_normal()(
        jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 3), np.uint32(2**32 - 1)), (5, 6)
    )
    with jaxinit.Client(url) as client:
        tensor = client.generate("lecun_normal", key, (5, 6))
    assert tensor.array.tobytes() == np.asarray(want).tobytes()
    assert json.loads(tensor.provenance.canonical_request)["key"]["fold_in"] == [3, 2**32 - 1]
    with pytest.raises(jaxinit.InvalidArgument, match="uint32"):
        jaxinit.fold_in(7, -1)


# --- the REST download and the gRPC stream ------------------------------------------------


def _post(server: Any, body: dict[str, Any], accept: str | None = None) -> httpx.Response:
    headers = {"Accept": accept} if accept else {}
    return httpx.post(f"{server.http_url}/v1/models/init", json=body, headers=headers, timeout=120)


@pytest.mark.parametrize("layout", ["flax", "torch"])
def test_rest_safetensors_equals_client(server: Any, layout: str) -> None:
    body = {"model": BLOCK, "key": {"seed": 4}, "mode": "nnx", "layout": layout}
    response = _post(server, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/safetensors"
    assert int(response.headers["content-length"]) == len(response.content)
    tensors, metadata = _safetensors.loads(response.content)
    with jaxinit.Client(server.grpc_url) as client:
        want = client.init_model(BLOCK, 4, mode="nnx", layout=layout, flat=True)
    assert list(tensors) == list(want)  # the same order too
    assert_same(tensors, dict(want))
    assert metadata["jax_version"] == jax.__version__
    assert metadata["format"] == ("pt" if layout == "torch" else "flax")
    assert metadata["model_digest"] == response.headers["x-jaxinit-model-digest"]

    import safetensors.numpy

    # The safetensors package reads the stream as written (float32 model: numpy has every dtype).
    official = safetensors.numpy.load(response.content)
    assert sorted(official) == sorted(tensors)
    for name, array in official.items():
        assert array.tobytes() == tensors[name].tobytes()


def test_rest_npz_and_plan(server: Any) -> None:
    import io

    body = {"model": CNN, "key": {"seed": 2}}
    npz = _post(server, body, "application/x-npz")
    assert npz.status_code == 200, npz.text
    with np.load(io.BytesIO(npz.content)) as files:
        assert_same({k: files[k] for k in files.files}, flax_params("cnn", "linen", 2))
    plan = _post(server, body, "application/json").json()
    names = [t["name"] for t in plan["tensors"]]
    assert names == list(flax_params("cnn", "linen", 2))  # creation order
    first = plan["tensors"][0]
    assert first["initializer"] == "lecun_normal" and first["shape"] == [3, 3, 3, 8]
    assert first["fold_in"] == m.linen_fold_in(("Conv_0", 1))


def test_grpc_init_model_stream(server: Any) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InitializersStub(channel)
        request = pb.InitModelRequest(model_json=json.dumps(MLP), key=pb.Key(seed=11), mode="linen")
        got: dict[str, bytearray] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for chunk in stub.InitModel(request):
            kind = chunk.WhichOneof("payload")
            assert kind != "error", chunk.error
            if kind == "header":
                got[chunk.request_id] = bytearray()
                shapes[chunk.request_id] = tuple(chunk.header.shape)
            else:
                got[chunk.request_id] += chunk.data.data
    want = flax_params("mlp", "linen", 11)
    assert list(got) == list(want)
    for name, array in want.items():
        assert shapes[name] == array.shape and bytes(got[name]) == array.tobytes()


# --- errors ---------------------------------------------------------------------------------


BAD = [
    ({"type": "Dense", "in_features": 4}, "model: 'features' is required"),
    ({"type": "Transformer"}, "unknown module type 'Transformer'"),
    (m.Module(m.Dense(4, 2), m.Dense(2, "x")), r"model.children\[1\]: 'features' must be an int"),
    (m.Module(m.Dense(4, 2, name="a"), m.Dense(2, 2, name="a")), "repeated: \\['a'\\]"),
    (m.Dense(4, 2, kernel_init="glorot"), "unknown initializer 'glorot'"),
    (m.Dense(4, 2, kernel_init=m.init("normal", sigma=1)), "unexpected argument"),
    (m.Dense(4, 2, bias_init="orthogonal"), "bias"),  # JAX refuses an orthogonal 1-D bias
    (m.Conv(3, 8, (3, 3), feature_group_count=2), "multiples of feature_group_count"),
    ({"params": [{"path": "w", "shape": [2]}]}, "'initializer' is required"),
]


@pytest.mark.parametrize(("model", "message"), BAD)
def test_bad_descriptions_are_clear_errors(server: Any, model: Any, message: str) -> None:
    response = _post(server, {"model": model, "key": {"seed": 0}})
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert re.search(message, response.json()["error"]["message"]), response.text
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InitializersStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.InitModel(pb.InitModelRequest(model_json=json.dumps(model), key=pb.Key(seed=0))))
        assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


def test_other_request_errors(server: Any) -> None:
    assert _post(server, {"model": MLP, "key": {"seed": 0}, "mode": "haiku"}).status_code == 400
    assert _post(server, {"model": MLP, "key": {"seed": 0}, "layout": "tf"}).status_code == 400
    assert _post(server, {"model": MLP}).status_code == 400
    response = _post(server, {"model": m.Dense(4, 2, param_dtype="bfloat16"), "key": {"seed": 0}}, "application/x-npz")
    assert response.status_code == 400 and "safetensors" in response.json()["error"]["message"]
    big = m.Module(*[m.Embed(2**20, 1024) for _ in range(5)])  # 20 GiB in all, each under the tensor cap
    response = _post(server, {"model": big, "key": {"seed": 0}})
    assert response.status_code == 413, response.text
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InitializersStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.InitModel(pb.InitModelRequest(model_json="{not json", key=pb.Key(seed=0))))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_client_model_errors_name_the_place(url: str) -> None:
    with jaxinit.Client(url) as client:
        with pytest.raises(jaxinit.InvalidArgument, match="in_features"):
            client.init_model({"type": "Dense", "features": 3}, 0)
        with pytest.raises(jaxinit.JaxError, match="Dense_0.bias"):
            client.init_model(m.Module(m.Dense(4, 2, bias_init="orthogonal")), 0)
        with pytest.raises(jaxinit.InvalidArgument, match="not JSON data"):
            client.init_model(m.Dense(4, object()), 0)  # type: ignore[arg-type]
        with pytest.raises(jaxinit.InvalidArgument, match="model must be a description"):
            client.init_model([m.Dense(4, 2)], 0)


def _model_calls(server: Any) -> dict[str, float]:
    """The server's count of model requests and of tensor requests, by transport."""
    text = httpx.get(f"{server.http_url}/metrics").text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        found = re.match(r"jaxinit_requests_total\{(.*)\} (\S+)", line)
        if found:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
            what = f"{labels['transport']}:{labels['method']}"
            counts[what] = counts.get(what, 0) + float(found.group(2))
    return counts


def test_the_client_asks_the_server_to_expand(server: Any) -> None:
    """One model path: the client sends the description, never expands it itself. Over gRPC
    that is one InitModel call; over HTTP one request too (the tensors framed in one response)."""
    desc = m.Sequential(m.Dense(4, 8), m.Function("relu"), m.Dense(8, 3))
    before = _model_calls(server)
    with jaxinit.Client(server.grpc_url) as client:
        client.init_model(desc, 0, layout="torch")
    after = _model_calls(server)
    grew = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert grew == {"grpc:InitModel": 1}, grew
    with jaxinit.Client(server.http_url) as client:
        client.init_model(desc, 0, layout="torch")
    final = _model_calls(server)
    grew = {k: final[k] - after.get(k, 0) for k in final if final[k] != after.get(k, 0)}
    assert grew == {"http:init_model": 1}, grew
