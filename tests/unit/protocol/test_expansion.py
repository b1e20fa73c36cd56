"""Model descriptions (JAX-free expansion): names, order, keys, the PyTorch layout, plan
entries and the descriptions that are refused."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from jaxinit import InvalidArgument, ProtocolError, UnknownInitializer
from jaxinit import models as m
from jaxinit.protocol.expansion import Output, expand, outputs


def test_linen_fold_in_is_flax_hashing() -> None:
    import jax
    from flax.core import scope

    key = jax.random.key(0)
    for path in [(1,), ("Dense_1", 2), ("Block_0", "attn", 300), ("ünï", 0)]:
        want = scope._fold_in_static(key, path)
        got = jax.random.fold_in(key, np.uint32(m.linen_fold_in(path)))
        assert (jax.random.key_data(want) == jax.random.key_data(got)).all(), path
    digest = hashlib.sha1(b"\0a\0b").digest()[:4]
    assert m.linen_fold_in(("a", "b"), fix_rng_separator=True) == int.from_bytes(digest, "big")


def test_expansion_names_order_and_keys() -> None:
    desc = m.Module(m.Dense(4, 8), m.Module(m.LayerNorm(8), m.Dense(8, 2), cls="Block"), m.Dense(2, 1, name="head"))
    linen = expand(desc)
    assert [p.name for p in linen] == [
        "Dense_0.kernel",
        "Dense_0.bias",
        "Block_0.LayerNorm_0.scale",
        "Block_0.LayerNorm_0.bias",
        "Block_0.Dense_0.kernel",
        "Block_0.Dense_0.bias",
        "head.kernel",
        "head.bias",
    ]
    assert linen[4].fold_in == m.linen_fold_in(("Block_0", "Dense_0", 1))
    assert [p.fold_in for p in expand(desc, mode="nnx")] == list(range(8))
    dg = expand(m.DenseGeneral((2, 3), (4, 5)))
    assert (dg[0].shape, dg[0].init_shape, dg[1].shape, dg[1].init_shape) == ((2, 3, 4, 5), (6, 20), (4, 5), (20,))


def test_torch_layout_outputs() -> None:
    desc = m.Module(m.Conv(3, 8, (5, 3)), m.BatchNorm(8), m.DenseGeneral(8, (2, 4)))
    outs = {o.name: o for o in outputs(expand(desc), "torch")}
    assert outs["Conv_0.weight"].shape == (8, 3, 5, 3)
    assert outs["DenseGeneral_0.weight"].shape == (8, 8) and outs["DenseGeneral_0.bias"].shape == (8,)
    assert outs["BatchNorm_0.num_batches_tracked"].param.dtype == "int64"
    assert outs["BatchNorm_0.running_var"].param.fold_in is None  # constants, no key
    kernel = np.arange(5 * 3 * 3 * 8, dtype=np.float32).reshape(5, 3, 3, 8)
    np.testing.assert_array_equal(outs["Conv_0.weight"].finish(kernel), kernel.transpose(3, 2, 0, 1))


@pytest.mark.parametrize(
    ("desc", "error", "message"),
    [
        ("Dense", InvalidArgument, "must be an object"),
        (m.Sequential(m.Dense(2, 2, name="x")), InvalidArgument, "named by position"),
        (m.Module(m.Function("relu")), InvalidArgument, "belongs in a Sequential"),
        (m.Param("w", "zeros", [2]), InvalidArgument, "belongs among the children"),
        (m.Dense(2, 2, kernel_init="nope"), UnknownInitializer, "kernel_init"),
        (m.Dense(2, 2, param_dtype="float128"), InvalidArgument, "param_dtype"),
        (m.Dense(2, 2, colour="red"), InvalidArgument, "unknown field"),
        (m.Module(), InvalidArgument, "no parameters"),
        (m.MultiHeadAttention(10, 3), InvalidArgument, "multiple of num_heads"),
        (m.GroupNorm(10, 4), InvalidArgument, "multiple of num_groups"),
        ({"params": [{"path": "a..b", "initializer": "zeros", "shape": [1]}]}, InvalidArgument, "dotted name"),
    ],
)
def test_bad_descriptions(desc: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        expand(desc)


def test_nesting_is_bounded() -> None:
    desc = m.Dense(2, 2)
    for _ in range(40):
        desc = m.Module(desc)
    with pytest.raises(InvalidArgument, match="deeper than"):
        expand(desc)


def test_a_plan_entry_reads_back_as_the_same_tensor() -> None:
    """The server's plan is what the HTTP client fetches: every field it needs round-trips,
    in both layouts, through JSON."""
    import json

    desc = m.Sequential(m.Conv(3, 8, (3, 3)), m.BatchNorm(8), m.DenseGeneral((4, 2), 6), m.Dense(6, 2))
    for layout in ("flax", "torch"):
        for out in outputs(expand(desc), layout):
            entry = json.loads(json.dumps(out.describe()))
            assert Output.from_description(entry) == dataclasses.replace(
                out, param=dataclasses.replace(out.param, torch=("", ""))
            )
            generated = np.arange(int(np.prod(out.param.init_shape)), dtype=np.float32).reshape(out.param.init_shape)
            assert Output.from_description(entry).finish(generated).tobytes() == out.finish(generated).tobytes()
    entry = outputs(expand(m.Dense(2, 3)))[0].describe()
    for broken in ({**entry, "convert": "rot90"}, {k: v for k, v in entry.items() if k != "param_shape"}):
        with pytest.raises(ProtocolError, match="plan entry"):
            Output.from_description(broken)


def test_a_64_bit_parameter_turns_x64_on_for_every_keyed_tensor_and_constants_take_none() -> None:
    from jaxinit.protocol.expansion import model_prng

    outs = outputs(expand(m.Module(m.Dense(2, 2), m.Dense(2, 2, param_dtype="float64"))))
    settings = model_prng(outs, None, None)
    assert {settings(o) for o in outs} == {(None, True)}
    assert {model_prng(outs, False, False)(o) for o in outs} == {(False, False)}  # as asked: resolve refuses it
    torch = outputs(expand(m.Module(m.Dense(2, 2), m.BatchNorm(2))), "torch")
    prng = model_prng(torch, True, None)
    tracked = next(o for o in torch if o.name.endswith("num_batches_tracked"))
    assert prng(tracked) == (None, None)  # torch's int64 buffer is a constant: it turns nothing on
    assert prng(torch[0]) == (True, None)


def test_the_model_canonical_form_and_file_metadata() -> None:
    from jaxinit.protocol.expansion import file_metadata, model_canonical
    from jaxinit.protocol.keys import Key

    canonical, digest = model_canonical("torch", [("a.weight", "1" * 64), ("a.bias", "2" * 64)])
    assert canonical == '{"layout":"torch","tensors":[["a.weight","' + "1" * 64 + '"],["a.bias","' + "2" * 64 + '"]]}'
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert model_canonical("torch", [("a.bias", "2" * 64), ("a.weight", "1" * 64)])[1] != digest  # order counts
    identity = {"jaxinit_version": "0.3.0", "jax_version": "0.10.0", "backend": "cpu", "secret": "not copied"}
    metadata = file_metadata(
        identity,
        mode="nnx",
        layout="flax",
        root=Key(seed=1, fold_in=(2,)),
        threefry_partitionable=True,
        enable_x64=False,
        model_digest=digest,
    )
    assert metadata == {
        "format": "flax",
        "jaxinit_version": "0.3.0",
        "jax_version": "0.10.0",
        "jaxlib_version": "",
        "backend": "cpu",
        "device_kind": "",
        "mode": "nnx",
        "layout": "flax",
        "root_key": '{"seed":1,"impl":"threefry2x32","fold_in":[2]}',
        "threefry_partitionable": "true",
        "enable_x64": "false",
        "jit": "false",
        "model_digest": digest,
    }


def test_nest_gives_flat_names_the_flax_trees_shape() -> None:
    from jaxinit.protocol.expansion import nest

    assert nest({"a.b.kernel": 1, "a.b.bias": 2, "a.scale": 3, "head": 4}) == {
        "a": {"b": {"kernel": 1, "bias": 2}, "scale": 3},
        "head": 4,
    }
    assert nest({}) == {}
