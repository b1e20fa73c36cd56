"""Model resolution: a description becomes one ordinary resolved request per tensor, each
the single-tensor request for the same values, with the model's limits and errors named by
tensor."""

from __future__ import annotations

import hashlib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinit import models as m
from jaxinit.protocol.errors import InvalidArgument, TooLarge, UnknownInitializer
from jaxinit.protocol.expansion import expand, model_canonical, outputs
from jaxinit.protocol.keys import Key
from jaxinit_server.core import engine
from jaxinit_server.core.model_init import InitModelParams, ResolvedModel, resolve_model
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, resolve

DEFAULTS = PrngDefaults(threefry_partitionable=True, enable_x64=False)
ROOT = Key(seed=3)
MLP = m.Module(m.Dense(4, 8), m.LayerNorm(8), m.Dense(8, 2, name="head"))


def _model(description: object = MLP, **fields: object) -> ResolvedModel:
    limits = fields.pop("limits", Limits())
    fields.setdefault("key", ROOT)
    return resolve_model(InitModelParams(description, **fields), limits, DEFAULTS)  # type: ignore[arg-type]


def test_each_tensor_is_the_single_tensor_request_for_its_key() -> None:
    model = _model()
    outs = outputs(expand(MLP), "flax")
    assert (
        [o.name for o in model.outputs]
        == [o.name for o in outs]
        == [
            "Dense_0.kernel",
            "Dense_0.bias",
            "LayerNorm_0.scale",
            "LayerNorm_0.bias",
            "head.kernel",
            "head.bias",
        ]
    )
    for out, request in zip(outs, model.requests, strict=True):
        p = out.param
        single = resolve(
            GenerateParams(p.initializer, p.init_shape, p.args, p.dtype, out.key(ROOT)),
            Limits(),
            DEFAULTS,
        )
        assert request == single  # (no request_id: a tensor's name goes with its messages instead)
    assert model.requests[0].key == Key(seed=3, fold_in=(model.outputs[0].param.fold_in,))
    assert model.nbytes == sum(r.nbytes for r in model.requests) == 4 * (4 * 8 + 8 + 8 + 8 + 8 * 2 + 2)
    assert (model.root, model.mode, model.layout) == (ROOT, "linen", "flax")


def test_the_model_digest_names_each_tensor_and_its_request() -> None:
    model = _model()
    pairs = [(o.name, r.digest) for o, r in zip(model.outputs, model.requests, strict=True)]
    assert (model.canonical, model.digest) == model_canonical("flax", pairs)
    assert model.digest == hashlib.sha256(model.canonical.encode()).hexdigest()
    assert json.loads(model.canonical)["tensors"][0] == ["Dense_0.kernel", model.requests[0].digest]
    assert _model(key=Key(seed=4)).digest != model.digest
    assert _model(layout="torch").digest != model.digest
    assert _model(mode="nnx").digest != model.digest
    assert _model().digest == model.digest


def test_the_plan_says_what_each_tensor_is_and_how_it_is_made() -> None:
    model = _model(jit=True)
    plan = model.plan()
    assert [entry["name"] for entry in plan] == [o.name for o in model.outputs]
    assert all(entry["jit"] is True for entry in plan)  # a jitted model.init: every tensor jitted
    assert [entry["request_digest"] for entry in plan] == [r.digest for r in model.requests]
    assert plan[0]["initializer"] == "lecun_normal" and plan[0]["shape"] == [4, 8]
    assert not any(entry["jit"] for entry in _model().plan())


def test_the_torch_layout_keeps_pytorchs_buffers_as_constants() -> None:
    model = _model(m.Module(m.Dense(3, 2), m.BatchNorm(2)), layout="torch")
    names = {o.name: r for o, r in zip(model.outputs, model.requests, strict=True)}
    assert set(names) >= {"Dense_0.weight", "BatchNorm_0.running_mean", "BatchNorm_0.num_batches_tracked"}
    assert names["Dense_0.weight"].shape == (3, 2)  # made as Flax makes it, transposed when sent
    assert names["BatchNorm_0.running_var"].key is None
    tracked = names["BatchNorm_0.num_batches_tracked"]
    assert (tracked.out_dtype, tracked.enable_x64) == ("int64", True)  # a constant: its own x64


def test_a_64_bit_parameter_turns_x64_on_for_the_whole_model() -> None:
    model = _model(m.Module(m.Dense(2, 2), m.Dense(2, 2, param_dtype="float64")))
    assert all(r.enable_x64 for r in model.requests)  # the float32 ones too, as a Flax user's x64 run
    assert _model().requests[0].enable_x64 is False


def test_errors_name_the_tensor() -> None:
    with pytest.raises(InvalidArgument, match=r"^kernel: dtype float64 needs enable_x64=true"):
        _model(m.Dense(2, 2, param_dtype="float64"), enable_x64=False)
    with pytest.raises(UnknownInitializer, match="kernel_init"):
        _model(m.Dense(2, 2, kernel_init="nope"))
    with pytest.raises(TooLarge, match=r"^kernel: a float32 tensor of shape \[1000, 1000\]"):
        _model(m.Dense(1000, 1000), limits=Limits(max_tensor_bytes=2**20))


def test_the_model_limit_counts_every_tensor() -> None:
    limits = Limits(max_model_bytes=4 * (4 * 8 + 8 + 8 + 8 + 8 * 2 + 2))
    assert _model(limits=limits).nbytes == limits.max_model_bytes
    with pytest.raises(TooLarge, match="more than 295 bytes, this server's limit per model request"):
        _model(limits=Limits(max_model_bytes=limits.max_model_bytes - 1))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"key": None}, "needs a root key"),
        ({"jit": "yes"}, "jit must be true or false"),
        ({"mode": "haiku"}, "mode must be one of"),
        ({"layout": "onnx"}, "layout must be one of"),
        ({"fix_rng_separator": 1}, "fix_rng_separator must be true or false"),
        ({"param_dtype": "float128"}, "unknown dtype"),
    ],
)
def test_bad_model_requests_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _model(**fields)


def test_the_values_are_flax_linens() -> None:
    """The resolved requests, run by the engine, are what flax.linen's init makes."""
    model = _model(m.Dense(4, 8))
    flax_params = nn.Dense(8).init(jax.random.key(3), jnp.ones((1, 4)))["params"]
    for out, request in zip(model.outputs, model.requests, strict=True):
        made, _ = engine.run(request)
        want = np.asarray(flax_params[out.name])
        assert made.dtype == want.dtype and made.tobytes() == want.tobytes(), out.name
