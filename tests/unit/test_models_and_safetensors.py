"""Model descriptions (JAX-free expansion) and the safetensors writer/reader, against the
safetensors package itself."""

from __future__ import annotations

import dataclasses
import hashlib

import ml_dtypes
import numpy as np
import pytest

from jaxinit import InvalidArgument, ProtocolError, UnknownInitializer
from jaxinit import models as m
from jaxinit.protocol import safetensors as st
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


def test_writer_is_read_by_the_safetensors_package() -> None:
    import safetensors.numpy

    arrays = {
        "b": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a": np.array([1, -2], np.int64),
        "e": np.zeros((0, 4), np.float16),
        "s": np.array(True),
    }
    data = st.dumps(arrays, {"who": "me"})
    loaded = safetensors.numpy.load(data)
    assert sorted(loaded) == sorted(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].tobytes() == array.tobytes()
    ours, metadata = st.loads(data)
    assert list(ours) == list(arrays) and metadata == {"who": "me"}


def test_reader_reads_the_package_and_bfloat16_via_torch() -> None:
    import safetensors.numpy

    torch = pytest.importorskip("torch", reason="torch: the release tier's extra (make setup-release)")
    import safetensors.torch

    data = safetensors.numpy.save({"x": np.ones((2, 2), np.float64)}, metadata={"k": "v"})
    tensors, metadata = st.loads(data)
    assert tensors["x"].dtype == np.float64 and metadata == {"k": "v"}
    bf = np.array([1.5, -2.25, 3e38], dtype=ml_dtypes.bfloat16)
    loaded = safetensors.torch.load(st.dumps({"w": bf}))
    assert loaded["w"].dtype == torch.bfloat16
    assert loaded["w"].view(torch.int16).numpy().tobytes() == bf.tobytes()
    back, _ = st.loads(safetensors.torch.save({"w": loaded["w"]}))
    assert back["w"].dtype == bf.dtype and back["w"].tobytes() == bf.tobytes()


MALFORMED = [
    b"",  # no header length
    b"\xff" * 8 + b"{}",  # a header length past the end
    (10).to_bytes(8, "little") + b"not json!!",
    st.header([("a", "float32", (2,))]),  # the data is missing
    st.header([("a", "float32", (2,))]).replace(b"[0,8]", b"[4,8]") + bytes(8),  # a hole
]


@pytest.mark.parametrize("data", MALFORMED)
def test_reader_rejects_malformed_files(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        st.loads(data)


def test_dtypes_without_a_safetensors_name() -> None:
    with pytest.raises(InvalidArgument, match="no dtype for complex128"):
        st.header([("z", "complex128", (1,))])


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


def test_the_http_client_refuses_an_answer_its_plan_did_not_name() -> None:
    from jaxinit._http import finish_planned
    from jaxinit._types import Tensor
    from jaxinit.protocol import Provenance

    out = outputs(expand(m.Dense(2, 3)), "torch")[0]
    tensor = Tensor(np.zeros((2, 3), np.float32), Provenance(request_digest="a" * 64), out.name)
    with pytest.raises(ProtocolError, match="plan named"):
        finish_planned(out, "b" * 64, tensor)
    laid_out = finish_planned(out, "a" * 64, tensor)
    assert isinstance(laid_out, Tensor) and laid_out.array.shape == (3, 2)
    failed = finish_planned(out, "a" * 64, InvalidArgument("bad"))
    assert isinstance(failed, InvalidArgument) and failed.message == f"{out.name}: bad"


def test_a_named_model_error_keeps_what_it_carries() -> None:
    from jaxinit import Overloaded
    from jaxinit._types import named

    error = Overloaded("busy", retry_after=2.5)
    renamed = named("Dense_0.kernel", error)
    assert isinstance(renamed, Overloaded) and renamed.retry_after == 2.5
    assert renamed.message == str(renamed) == "Dense_0.kernel: busy"
