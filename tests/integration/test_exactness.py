"""The determinism contract: the server's bytes equal local JAX's, over both transports.

Every initializer x every dtype x both PRNG modes, shapes of rank 0..4 with
0-size ones, every key form; requests local JAX refuses must be refused with
JAX's own message.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import numpy as np
import pytest

import jaxinit
from helpers import local_jax
from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPE_NAMES

ALL_SHAPES = [(), (0,), (7,), (0, 3), (6, 6), (3, 4, 5), (2, 3, 4, 5), (3, 0, 2)]
VARIANT_SHAPES = [(4, 5), (3, 4, 5)]
MODES = [True, False]

# Non-default factory arguments worth covering for each entry (defaults are covered too).
ARGS: dict[str, list[dict[str, Any]]] = {
    "constant": [{"value": -7}, {"value": 0.1}, {"value": [1.5, -2.0, 3.25]}],
    "variance_scaling": [
        {"scale": s, "mode": m, "distribution": d}
        for s, m, d in [
            (1.0, "fan_in", "truncated_normal"),
            (2, "fan_out", "normal"),
            (0.5, "fan_avg", "uniform"),
            (3.0, "fan_geo_avg", "uniform"),
            (1.0, "fan_geo_avg", "truncated_normal"),
        ]
    ]
    + [{"scale": 1.0, "mode": "fan_in", "distribution": "normal", "in_axis": [0, 1], "out_axis": -1, "batch_axis": 2}],
    "normal": [{}, {"stddev": 0.5}, {"stddev": 2, "dtype": "bfloat16"}],
    "uniform": [{}, {"scale": 3.0}],
    "truncated_normal": [{}, {"stddev": 1.0, "lower": -1.0, "upper": 0.5}],
    "orthogonal": [{}, {"scale": 2.0, "column_axis": 0}],
    "delta_orthogonal": [{}, {"scale": 0.5}],
    "glorot_normal": [{}, {"in_axis": -1, "out_axis": -2}],
    "he_uniform": [{}, {"batch_axis": [0]}],
}


def _cases(
    names: list[str], shapes: list[tuple[int, ...]], dtypes: list[str | None], variants: bool = False
) -> list[tuple[Any, ...]]:
    cases = []
    for name in names:
        arg_sets = ARGS.get(name, [{}]) if variants else [_DEFAULT_ARGS.get(name, {})]
        for args in arg_sets:
            for shape, dtype, mode in itertools.product(shapes, dtypes, MODES):
                cases.append((name, args, shape, dtype, mode))
    return cases


# Arguments for entries that have required ones.
_DEFAULT_ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.3},
    "variance_scaling": {"scale": 1.5, "mode": "fan_avg", "distribution": "truncated_normal"},
}
ALL_NAMES = sorted(CATALOG)
_REFERENCE: dict[str, Any] = {}


def _reference(
    name: str,
    args: dict[str, Any],
    key: Any,
    shape: tuple[int, ...],
    dtype: str | None,
    partitionable: bool,
    x64: bool | None = None,
) -> Any:
    cache_key = repr((name, args, key, shape, dtype, partitionable, x64))
    if cache_key not in _REFERENCE:
        _REFERENCE[cache_key] = local_jax(name, args, key, shape, dtype, partitionable=partitionable, x64=x64)
    return _REFERENCE[cache_key]


def _check(result: Any, expected: Any, what: str) -> None:
    if isinstance(expected, Exception):
        assert isinstance(result, jaxinit.JaxError), f"{what}: local JAX raised {expected!r}, server gave {result!r}"
        assert result.message == str(expected), what
        return
    assert not isinstance(result, Exception), f"{what}: server raised {result!r}"
    array = result.array
    assert array.dtype == expected.dtype, what
    assert array.shape == expected.shape, what
    assert array.tobytes() == expected.tobytes(), f"{what}: bytes differ"


def _run_matrix(url: str, cases: list[tuple[Any, ...]], key: Any = 42) -> int:
    checked = 0
    for partitionable in MODES:
        chosen = [c for c in cases if c[4] == partitionable]
        with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
            requests = [client.request(n, key, s, d, args=a) for n, a, s, d, _ in chosen]
            results = list(client.generate_many(requests))
        assert len(results) == len(chosen)
        for (name, args, shape, dtype, _), result in zip(chosen, results, strict=True):
            expected = _reference(name, args, key, shape, dtype, partitionable)
            _check(result, expected, f"{name}({args}) {shape} {dtype} partitionable={partitionable}")
            checked += 1
    return checked


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_dtype(url: str, name: str) -> None:
    assert _run_matrix(url, _cases([name], [(3, 4, 5)], [None, *DTYPE_NAMES]))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_shape(url: str, name: str) -> None:
    """Ranks 0..4, 0-size shapes included."""
    assert _run_matrix(url, _cases([name], ALL_SHAPES, ["float32"]), key=-3)


@pytest.mark.parametrize("name", sorted(ARGS))
def test_every_argument(url: str, name: str) -> None:
    assert _run_matrix(url, _cases([name], VARIANT_SHAPES, ["float32", "bfloat16"], variants=True), key=7)


SEEDS = [0, 42, -3, 2**31, 2**32 + 7, 2**40 + 5, -(2**63), 2**63 - 1]
KEY_FORMS: list[tuple[Any, Any]] = [
    *[(s, s) for s in SEEDS],
    (jaxinit.wrap_key_data([0, 42]), ("data", [0, 42], "threefry2x32")),
    (jaxinit.wrap_key_data([2**32 - 1, 7]), ("data", [2**32 - 1, 7], "threefry2x32")),
    (np.array([5, 6], np.uint32), ("data", [5, 6], "threefry2x32")),
    (jaxinit.key(9, impl="rbg"), ("seed", 9, "rbg")),
    (jaxinit.key(-9, impl="unsafe_rbg"), ("seed", -9, "unsafe_rbg")),
    (jaxinit.wrap_key_data([1, 2, 3, 4], impl="rbg"), ("data", [1, 2, 3, 4], "rbg")),
    (jaxinit.wrap_key_data([4, 3, 2, 1], impl="unsafe_rbg"), ("data", [4, 3, 2, 1], "unsafe_rbg")),
    (jaxinit.key(-3, impl="threefry4x32"), ("seed", -3, "threefry4x32")),
    (jaxinit.key(2**40 + 5, impl="philox2x32"), ("seed", 2**40 + 5, "philox2x32")),
    (jaxinit.wrap_key_data([8], impl="philox2x32"), ("data", [8], "philox2x32")),
    (jaxinit.wrap_key_data([8, 9], impl="philox4x32"), ("data", [8, 9], "philox4x32")),
]


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("partitionable", MODES)
def test_every_key_form(url: str, partitionable: bool, x64: bool) -> None:
    """Seeds keep jax.random.key's exact semantics (negative and large ones differ with x64)."""
    names = ["lecun_normal", "normal", "uniform", "orthogonal", "truncated_normal"]
    with jaxinit.Client(url, threefry_partitionable=partitionable, enable_x64=x64) as client:
        for (key, ref_key), name in itertools.product(KEY_FORMS, names):
            tensor = client.generate(name, key, (5, 6))
            expected = _reference(name, {}, ref_key, (5, 6), None, partitionable, x64)
            _check(tensor, expected, f"{name} key={ref_key} x64={x64} partitionable={partitionable}")
            assert tensor.provenance.threefry_partitionable is partitionable
            assert tensor.provenance.enable_x64 is x64


def _derived(base: Any, steps: list[tuple[Any, ...]]) -> Any:
    """``base`` (a JAX key) through ``steps``, as jax.random does them."""
    for step in steps:
        base = (
            jax.random.fold_in(base, np.uint32(step[1]))
            if step[0] == "fold_in"
            else jax.random.split(base, step[1])[step[2]]
        )
    return base


SPLIT_CHAIN = [("fold_in", 3), ("split", 4, 2), ("fold_in", 2**32 - 1), ("split", 3, 0), ("split", 1, 0)]


@pytest.mark.parametrize("partitionable", MODES)
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg", "threefry4x32", "philox2x32", "philox4x32"])
def test_split_and_fold_in_chains_mean_what_jax_random_does(url: str, impl: str, partitionable: bool) -> None:
    """A key derived by fold_in and split steps in any order (as nn.scan and
    nnx.split_rngs derive a stacked layer's key) is jax.random's key, for every key
    implementation and both PRNG modes; the provenance holds the derived key's data."""
    key = jaxinit.key(11, impl=impl)
    for step in SPLIT_CHAIN:
        key = jaxinit.fold_in(key, step[1]) if step[0] == "fold_in" else jaxinit.split(key, step[1])[step[2]]
    assert key.fold_in == (3,) and len(key.derive) == 4
    with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
        tensor = client.generate("normal", key, (4, 5))
    with jax.threefry_partitionable(partitionable):
        jax_key = _derived(jax.random.key(11, impl=impl), SPLIT_CHAIN)
        want = np.asarray(jax.nn.initializers.normal()(jax_key, (4, 5)))
        data = np.asarray(jax.random.key_data(jax_key)).ravel().tolist()
    assert tensor.array.tobytes() == want.tobytes()
    assert list(tensor.provenance.key_data) == data


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


def _stacked_reference(init: Any, base: Any, steps: list[tuple[Any, ...]], shape: tuple[int, ...]) -> np.ndarray:
    """What a stacked key means, spelled out with jax.random: a stack step is every key of
    split(key, num), the later steps applied to each, the slices stacked in order."""
    if not steps:
        return np.asarray(init(base, shape))
    step, rest = steps[0], steps[1:]
    if step[0] == "stack":
        return np.stack([_stacked_reference(init, k, rest, shape) for k in jax.random.split(base, step[1])])
    return _stacked_reference(init, _derived(base, [step]), rest, shape)


STACK_CHAIN = [("fold_in", 5), ("stack", 3), ("fold_in", 2**31 + 7), ("split", 4, 3), ("stack", 2), ("fold_in", 1)]


@pytest.mark.parametrize("partitionable", MODES)
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg", "threefry4x32", "philox2x32", "philox4x32"])
def test_stacked_keys_make_one_slice_per_key(url: str, impl: str, partitionable: bool) -> None:
    """A stack step makes the key a batch (all of jax.random.split(key, num)), each later
    step applied to every key of it: the tensor is the slices made with each key, stacked
    on leading axes, in every key implementation and both PRNG modes. A range of it is
    those bytes. The provenance holds the data of the key the first stack step splits."""
    key = jaxinit.Key(seed=9, impl=impl, derive=tuple(STACK_CHAIN))
    assert key.stack == (3, 2)
    init = jax.nn.initializers.lecun_normal()
    with jax.threefry_partitionable(partitionable):
        want = _stacked_reference(init, jax.random.key(9, impl=impl), STACK_CHAIN, (6, 5))
        head = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(9, impl=impl), 5))).ravel()
    with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
        tensor = client.generate("lecun_normal", key, (3, 2, 6, 5))
        assert tensor.array.shape == (3, 2, 6, 5)
        assert tensor.array.tobytes() == want.tobytes()
        assert list(tensor.provenance.key_data) == head.tolist()
        part = client.generate("lecun_normal", key, (3, 2, 6, 5), offset=41, count=77)
        assert part.array.tobytes() == want.reshape(-1)[41:118].tobytes()


@pytest.mark.parametrize("name", ["orthogonal", "normal", "truncated_normal", "glorot_uniform", "zeros"])
def test_stacked_keys_are_jax_vmap_of_the_initializer(url: str, name: str) -> None:
    """What nn.scan and nnx.vmap do to initialise stacked layers, jax.vmap of the initializer
    over split keys, is the stacked key's tensor, for chunked families, whole ones (a QR
    per slice) and keyless ones; large enough that the chunked route streams its slices."""
    init = getattr(jax.nn.initializers, name)
    init = init if name == "zeros" else init()
    shape = (4, 300, 600) if name == "normal" else (4, 12, 8)
    want = np.asarray(
        jax.vmap(lambda k: init(jax.random.fold_in(k, 3), shape[1:], jax.numpy.float32))(
            jax.random.split(jax.random.key(2), 4)
        )
    )
    with jaxinit.Client(url) as client:
        got = client.generate(name, jaxinit.fold_in(jaxinit.stacked(jaxinit.key(2), 4), 3), shape)
    assert got.array.tobytes() == want.tobytes()


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


@pytest.mark.parametrize("partitionable", MODES)
def test_jit_values_are_jax_jit_of_the_initializer(url: str, partitionable: bool) -> None:
    """``jit`` asks for what jax.jit(init) gives (inside nn.scan, a jitted model.init):
    XLA fuses normal's scale into the sampler and some bits differ from the eager call's.
    Both are exact, each to its own JAX call; only the jit request says jit in its
    canonical form, so eager digests stay as they were. A stacked key composes with it."""
    init = jax.nn.initializers.normal(0.01)
    key = jax.random.key(8)
    with jax.threefry_partitionable(partitionable):
        eager = np.asarray(init(key, (64, 64)))
        compiled = np.asarray(jax.jit(lambda k: init(k, (64, 64)))(key))
        stacked = np.asarray(
            jax.jit(jax.vmap(lambda k: init(jax.random.fold_in(k, 1), (8, 8))))(jax.random.split(key, 3))
        )
    assert eager.tobytes() != compiled.tobytes()  # else this test shows nothing
    with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
        got = client.generate("normal", 8, (64, 64), args={"stddev": 0.01}, jit=True)
        plain = client.generate("normal", 8, (64, 64), args={"stddev": 0.01})
        batch = client.generate(
            "normal", jaxinit.fold_in(jaxinit.stacked(8, 3), 1), (3, 8, 8), args={"stddev": 0.01}, jit=True
        )
    assert got.array.tobytes() == compiled.tobytes()
    assert plain.array.tobytes() == eager.tobytes()
    assert batch.array.tobytes() == stacked.tobytes()
    assert '"jit":true' in got.provenance.canonical_request and "jit" not in plain.provenance.canonical_request


def test_jit_applies_to_keyless_initializers_too(url: str) -> None:
    """A constant's value is converted by XLA under jit: an out-of-range float into int32
    saturates one way eagerly and another way compiled. jit asks for the compiled one."""
    init = jax.nn.initializers.constant(1e10)
    eager = np.asarray(init(None, (3,), jax.numpy.int32))
    compiled = np.asarray(jax.jit(lambda: init(None, (3,), jax.numpy.int32))())
    with jaxinit.Client(url) as client:
        got = client.generate("constant", None, (3,), "int32", args={"value": 1e10}, jit=True)
        plain = client.generate("constant", None, (3,), "int32", args={"value": 1e10})
    assert got.array.tobytes() == compiled.tobytes() and plain.array.tobytes() == eager.tobytes()


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


def test_jax_keys_when_jax_is_installed(url: str) -> None:
    """A JAX key object, typed or legacy, is accepted and means what it means in JAX."""
    keys = [
        jax.random.key(7),
        jax.random.PRNGKey(7),
        jax.random.key(7, impl="rbg"),
        jax.random.split(jax.random.key(1))[1],
        jax.random.fold_in(jax.random.key(2), 3),
    ]
    with jaxinit.Client(url) as client:
        for key in keys:
            got = client.he_normal()(key, (8, 3), "float16")
            expected = np.asarray(jax.nn.initializers.he_normal()(key, (8, 3), jax.numpy.float16))
            assert got.tobytes() == expected.tobytes()
            assert got.dtype == expected.dtype


def test_provenance_says_what_produced_it(url: str) -> None:
    with jaxinit.Client(url) as client:
        tensor = client.generate("lecun_normal", 2**40 + 5, (3, 3))
    p = tensor.provenance
    assert (p.jax_version, p.backend) == (jax.__version__, jax.default_backend())
    assert p.key_impl == "threefry2x32"
    assert p.key_data == tuple(int(w) for w in jax.random.key_data(jax.random.key(2**40 + 5)))
    assert p.threefry_partitionable is bool(jax.config.jax_threefry_partitionable)
    assert p.enable_x64 is False
    assert '"seed":1099511627781' in p.canonical_request
    assert len(p.request_digest) == 64


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
