"""Key forms and PRNG settings over the transports, in this process (the session's
in-process server, real loopback sockets): derived, stacked and jit keys in a GET URL and
over KServe v2, their refusals, and whole models from derived root keys and per-call PRNG
flags, each against local JAX or Flax. The full exactness matrix is tests/core."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

import jaxinit


def _derived(base: Any, steps: list[tuple[Any, ...]]) -> Any:
    """``base`` (a JAX key) through ``steps``, as jax.random does them."""
    for step in steps:
        base = (
            jax.random.fold_in(base, np.uint32(step[1]))
            if step[0] == "fold_in"
            else jax.random.split(base, step[1])[step[2]]
        )
    return base


def test_derived_keys_over_the_get_form_and_kserve(server: Any) -> None:
    """The same chain as a GET URL (key_derive=fold_in:X,split:N:I, what an HTTP cache
    keys on) and as KServe's key_derive parameter."""
    import httpx

    key = jaxinit.split(jaxinit.fold_in(jaxinit.split(jaxinit.key(4), 5)[3], 8), 2)[1]
    jax_key = _derived(jax.random.key(4), list(key.derive))
    want = np.asarray(jax.nn.initializers.lecun_normal()(jax_key, (6, 3)))
    with jaxinit.Client(server.http_url, cacheable=True) as client:
        assert client.generate("lecun_normal", key, (6, 3)).array.tobytes() == want.tobytes()
    body = {
        "inputs": [
            {"name": "shape", "datatype": "INT64", "shape": [2], "data": [6, 3]},
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [4]},
        ],
        "parameters": {"key_derive": key.derive_text()},
    }
    answer = httpx.post(f"{server.http_url}/v2/models/lecun_normal/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    got = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(6, 3)
    assert got.tobytes() == want.tobytes()
    bad = httpx.get(f"{server.http_url}/v1/generate/lecun_normal?shape=2&seed=0&key_derive=split:2:2", timeout=60)
    assert bad.status_code == 400 and "0 <= index < num" in bad.json()["error"]["message"]


def test_stacked_keys_over_the_get_form_and_their_refusals(server: Any) -> None:
    """``key_derive=stack:N`` in a GET URL; a shape that does not start with the stack sizes,
    too many slices, and a slice shape JAX refuses are each refused with what to change."""
    import httpx

    want = np.asarray(
        jax.vmap(lambda k: jax.nn.initializers.he_normal()(k, (5, 3)))(jax.random.split(jax.random.key(1), 2))
    )
    base = f"{server.http_url}/v1/generate/he_normal"
    ok = httpx.get(f"{base}?shape=2,5,3&seed=1&key_derive=stack:2", headers={"Accept": "application/x-npy"}, timeout=60)
    assert ok.status_code == 200, ok.text
    assert np.load(__import__("io").BytesIO(ok.content)).tobytes() == want.tobytes()
    for query, words in [
        ("shape=3,5,3&seed=1&key_derive=stack:2", "shape starts with [2]"),
        ("shape=65,64,5,5&seed=1&key_derive=stack:65,stack:64", "at most 4096 slices"),
        ("shape=2,5&seed=1&key_derive=stack:2", "at least 2D"),
        ("shape=2,5&seed=1&key_derive=stack:0", "1 <= num <= 4096"),
    ]:
        bad = httpx.get(f"{base}?{query}", timeout=60)
        assert bad.status_code == 400, (query, bad.text)
        assert words in bad.json()["error"]["message"], (query, bad.text)
    with jaxinit.Client(server.grpc_url) as client, pytest.raises(jaxinit.InvalidArgument, match="shape starts with"):
        client.generate("he_normal", jaxinit.stacked(1, 2), (5, 3))


def test_jit_over_the_get_form_and_kserve(server: Any) -> None:
    import httpx

    init = jax.nn.initializers.normal(0.01)
    want = np.asarray(jax.jit(lambda k: init(k, (64, 64)))(jax.random.key(8)))
    url = f"{server.http_url}/v1/generate/normal?shape=64,64&seed=8&stddev=0.01&jit=true"
    answer = httpx.get(url, headers={"Accept": "application/octet-stream"}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.content == want.tobytes()
    body = {
        "inputs": [
            {"name": "shape", "datatype": "INT64", "shape": [2], "data": [64, 64]},
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [8]},
        ],
        "parameters": {"jit": True, "stddev": 0.01},
    }
    answer = httpx.post(f"{server.http_url}/v2/models/normal/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    got = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(64, 64)
    assert got.tobytes() == want.tobytes()


def test_a_model_from_a_derived_root_key(url: str) -> None:
    """init_model's root key may itself be derived: flax's init with split(key(0), 3)[2]."""
    from flax import linen as nn

    root = jaxinit.split(jaxinit.key(0), 3)[2]
    model = jaxinit.models.Sequential(jaxinit.models.Dense(8, 4), jaxinit.models.Dense(4, 2))
    with jaxinit.Client(url) as client:
        got = client.init_model(model, root, flat=True)
    flax_model = nn.Sequential([nn.Dense(4), nn.Dense(2)])
    want = flax_model.init(jax.random.split(jax.random.key(0), 3)[2], np.zeros((1, 8), np.float32))["params"]
    flat = {f"{layer}.{name}": np.asarray(v) for layer, params in want.items() for name, v in params.items()}
    assert sorted(got) == sorted(flat)
    assert all(got[name].tobytes() == flat[name].tobytes() for name in flat)


def test_per_call_prng_flags_override_the_clients(url: str) -> None:
    """threefry_partitionable/enable_x64 per generate, request (generate_many) and init_model."""
    seed = -3  # x64 changes a negative seed's key
    with jaxinit.Client(url, threefry_partitionable=True, enable_x64=False) as client:
        tensor = client.generate("normal", seed, (4, 4), threefry_partitionable=False, enable_x64=True)
        (many,) = client.generate_many([client.request("normal", seed, (4, 4), threefry_partitionable=False)])
        model = client.init_model(jaxinit.models.Dense(4, 3), seed, flat=True, enable_x64=True)
    with jax.threefry_partitionable(False), jax.enable_x64(True):
        want = np.asarray(jax.nn.initializers.normal()(jax.random.key(seed), (4, 4)))
    with jax.threefry_partitionable(False), jax.enable_x64(False):
        want_many = np.asarray(jax.nn.initializers.normal()(jax.random.key(seed), (4, 4)))
    assert want.tobytes() != want_many.tobytes()
    assert tensor.array.tobytes() == want.tobytes() and tensor.provenance.enable_x64 is True
    assert isinstance(many, jaxinit.Tensor) and many.array.tobytes() == want_many.tobytes()
    assert many.provenance.threefry_partitionable is False and many.provenance.enable_x64 is False
    with jax.enable_x64(True):
        key = jax.random.fold_in(jax.random.key(seed), np.uint32(jaxinit.models.linen_fold_in((1,))))
        kernel = np.asarray(jax.nn.initializers.lecun_normal()(key, (4, 3), np.float32))
    assert model["kernel"].tobytes() == kernel.tobytes()


def test_a_mixed_precision_model_runs_with_x64_as_a_flax_user_does(url: str) -> None:
    """float64 and float32 parameters, a seed above 2**32, x64 unset: every parameter
    (float32 ones too) gets the key a Flax user with x64 on gets."""
    from flax import linen as nn

    seed = 2**33 + 1
    model = jaxinit.models.Sequential(
        jaxinit.models.Dense(3, 4, param_dtype="float64"), jaxinit.models.Dense(4, 2, param_dtype="float32")
    )
    with jaxinit.Client(url) as client:
        got = client.init_model(model, seed, flat=True)
    with jax.enable_x64(True):
        flax_model = nn.Sequential([nn.Dense(4, param_dtype=np.float64), nn.Dense(2, param_dtype=np.float32)])
        want = flax_model.init(jax.random.key(seed), np.zeros((1, 3), np.float64))["params"]
    flat = {f"{layer}.{name}": np.asarray(v) for layer, params in want.items() for name, v in params.items()}
    assert got["layers_1.kernel"].dtype == np.float32
    assert all(got[name].tobytes() == flat[name].tobytes() for name in flat), sorted(flat)
