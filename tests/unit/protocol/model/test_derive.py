"""jaxinit.protocol.model.derive: each parameter of a description with the key Flax derives for
it, as exact values (linen's path hashes computed here from their definition, nnx's counts
along the rng streams, a Scan's stacked keys), and expand's own refusals. That these keys
are Flax's is checked against Flax in tests/integration (test_scan, test_rng_streams).
JAX-free."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from jaxinit.protocol.errors import InvalidArgument, UnknownDtype
from jaxinit.protocol.model.derive import DEFAULT_STREAMS, Param, expand, linen_fold_in


def h(*parts: bytes) -> int:
    """linen's hash of a path: the first 4 bytes of a SHA-1 over its parts, big-endian."""
    return int.from_bytes(hashlib.sha1(b"".join(parts)).digest()[:4], "big")


def dense(**fields: Any) -> dict[str, Any]:
    return {"type": "Dense", "in_features": 2, "features": 3, **fields}


def keys(params: list[Param]) -> list[tuple[str, Any, tuple[Any, ...]]]:
    return [(p.name, p.fold_in, p.key_prefix) for p in params]


DROPOUT = {"type": "Dropout", "rate": 0.1, "rngs": True}


def test_linen_fold_in_hashes_names_as_utf8_and_counts_as_minimal_big_endian() -> None:
    assert linen_fold_in(("Dense_0", 1)) == h(b"Dense_0", b"\x01")
    assert linen_fold_in(("Block_0", "attn", 300)) == h(b"Block_0", b"attn", b"\x01\x2c")
    assert linen_fold_in(("ünï", 0)) == h("ünï".encode(), b"")  # 0 is no bytes at all
    assert linen_fold_in(()) == h()
    # flax_fix_rng_separator: a zero byte before each part, so ("ab",) and ("a", "b") differ
    assert linen_fold_in(("a", "b"), fix_rng_separator=True) == h(b"\0a\0b")
    assert linen_fold_in(("ab",)) == linen_fold_in(("a", "b"))
    assert linen_fold_in(("ab",), fix_rng_separator=True) != linen_fold_in(("a", "b"), fix_rng_separator=True)
    assert 0 <= linen_fold_in(("x", 2**40)) < 2**32


def test_linen_keys_are_the_path_hash_with_the_count_in_its_module() -> None:
    params = expand(
        {"type": "Module", "children": [dense(), {"type": "Module", "class": "Block", "children": [dense()]}]}
    )
    assert keys(params) == [
        ("Dense_0.kernel", h(b"Dense_0", b"\x01"), ()),
        ("Dense_0.bias", h(b"Dense_0", b"\x02"), ()),  # a zero bias takes its count too
        ("Block_0.Dense_0.kernel", h(b"Block_0", b"Dense_0", b"\x01"), ()),
        ("Block_0.Dense_0.bias", h(b"Block_0", b"Dense_0", b"\x02"), ()),
    ]
    root = expand(dense())
    assert [p.fold_in for p in root] == [h(b"\x01"), h(b"\x02")]  # the root module's path is empty
    fixed = expand(dense(), fix_rng_separator=True)
    assert [p.fold_in for p in fixed] == [h(b"\0\x01"), h(b"\0\x02")]


def test_a_param_is_everything_the_request_needs() -> None:
    desc = {"type": "DenseGeneral", "in_features": [2, 3], "features": 4, "kernel_init": "he_normal"}
    kernel, bias = expand(desc, param_dtype="bfloat16")
    assert kernel == Param(
        path=("kernel",),
        initializer="he_normal",
        args={},
        shape=(2, 3, 4),
        init_shape=(6, 4),
        dtype="bfloat16",
        fold_in=h(b"\x01"),
        module="DenseGeneral",
        role="kernel",
        torch=("weight", "flat_t"),
    )
    assert (bias.name, bias.shape, bias.init_shape, bias.key_steps) == ("bias", (4,), (4,), (("fold_in", h(b"\x02")),))


def test_a_params_name_and_key_steps() -> None:
    p = Param(("a", "b", "kernel"), "zeros", {}, (1,), (1,), "float32", 7, "Dense", "kernel")
    assert p.name == "a.b.kernel"
    assert p.key_steps == (("fold_in", 7),)
    stacked = Param(("s", "w"), "zeros", {}, (2, 1), (2, 1), "float32", 3, "Param", "w", key_prefix=(("stack", 2),))
    assert stacked.key_steps == (("stack", 2), ("fold_in", 3))
    assert Param(("w",), "zeros", {}, (), (), "float32", None, "BatchNorm", "w").key_steps == ()  # a constant


def test_nnx_counts_every_parameter_along_the_params_stream() -> None:
    params = expand({"type": "Module", "children": [dense(), dense(use_bias=False), dense()]}, mode="nnx")
    assert [(p.name, p.fold_in) for p in params] == [
        ("Dense_0.kernel", 0),
        ("Dense_0.bias", 1),
        ("Dense_1.kernel", 2),
        ("Dense_2.kernel", 3),
        ("Dense_2.bias", 4),
    ]


@pytest.mark.parametrize(
    ("streams", "counts"),
    [
        (["default"], [0, 1, 3, 4]),  # one shared stream: the dropout's count moves every later key
        (["params", "dropout"], [0, 1, 2, 3]),  # separate streams: it does not
        (["dropout", "default"], [0, 1, 2, 3]),  # parameters fall back on default, the dropout has its own
        (["params", "default"], [0, 1, 2, 3]),  # the dropout falls back on default, not on params
    ],
)
def test_nnx_draws_shift_later_keys_only_on_a_shared_stream(streams: list[str], counts: list[int]) -> None:
    desc = {"type": "Module", "rng_streams": streams, "children": [dense(), DROPOUT, dense()]}
    assert [p.fold_in for p in expand(desc, mode="nnx")] == counts
    assert desc["rng_streams"] == streams  # the caller's description is left as it was


def test_linen_ignores_rng_streams() -> None:
    desc = {"type": "Module", "rng_streams": ["default"], "children": [dense(), DROPOUT, dense()]}
    assert expand(desc) == expand({"type": "Module", "children": [dense(), DROPOUT, dense()]})
    assert DEFAULT_STREAMS == ("params",)


def test_a_draw_from_a_stream_the_rngs_lack_is_refused_naming_the_module() -> None:
    desc = {"type": "Module", "children": [dense(), DROPOUT]}
    with pytest.raises(InvalidArgument) as caught:
        expand(desc, mode="nnx")
    assert str(caught.value) == (
        "model.children[1]: the Dropout draw(s) from the 'dropout' rng stream, which the model's nnx.Rngs "
        "(rng_streams ['params']) lacks, with no 'default' stream to fall back on (Flax raises here too); name "
        "the model's streams in 'rng_streams' at its root"
    )
    with pytest.raises(InvalidArgument, match=r"^model: its parameters draw\(s\) from the 'params' rng stream"):
        expand({**desc, "rng_streams": ["dropout"]}, mode="nnx")


@pytest.mark.parametrize("streams", [[], ["a", "a"], ["params", ""], "params", [1], None])
def test_rng_streams_are_distinct_names(streams: Any) -> None:
    with pytest.raises(InvalidArgument) as caught:
        expand({"type": "Module", "rng_streams": streams, "children": [dense()]}, mode="nnx")
    assert str(caught.value) == (
        "model: 'rng_streams' must be a non-empty list of distinct stream names, as the model's nnx.Rngs has them "
        f"(['default'] for nnx.Rngs(0), ['params', 'dropout'] for nnx.Rngs(params=0, dropout=1)); got {streams!r}"
    )


def scan(**fields: Any) -> dict[str, Any]:
    return {
        "type": "Module",
        "children": [dense(), {"type": "Scan", "length": 3, "module": dense(), **fields}, dense()],
    }


def test_linen_scan_splits_the_root_key_and_spends_the_first_traces_counts() -> None:
    params = expand(scan())
    assert keys(params) == [
        ("Dense_0.kernel", h(b"Dense_0", b"\x01"), ()),
        ("Dense_0.bias", h(b"Dense_0", b"\x02"), ()),
        # nn.scan traces its body twice at init: the module's 2 parameters' first counts are spent
        ("ScanDense_0.kernel", h(b"ScanDense_0", b"\x03"), (("stack", 3),)),
        ("ScanDense_0.bias", h(b"ScanDense_0", b"\x04"), (("stack", 3),)),
        ("Dense_1.kernel", h(b"Dense_1", b"\x01"), ()),
        ("Dense_1.bias", h(b"Dense_1", b"\x02"), ()),
    ]
    stacked = params[2:4]
    assert [(p.shape, p.init_shape, p.jit, p.stack_at) for p in stacked] == [
        ((3, 2, 3), (3, 2, 3), True, 1),  # compiled, as nn.scan's body is; the layer index after 1 name
        ((3, 3), (3, 3), True, 1),
    ]
    assert not any(p.jit for p in params[:2] + params[4:])


def test_linen_vmap_is_the_same_split_with_plain_counts_and_eager_values() -> None:
    params = expand(scan(transform="vmap"))
    assert keys(params)[2:4] == [
        ("ScanDense_0.kernel", h(b"ScanDense_0", b"\x01"), (("stack", 3),)),
        ("ScanDense_0.bias", h(b"ScanDense_0", b"\x02"), (("stack", 3),)),
    ]
    assert not any(p.jit for p in params)


def test_a_scan_at_the_root_stacks_at_zero_and_counts_a_blocks_modules_on_their_own() -> None:
    block = {"type": "Module", "class": "Block", "children": [dense(), dense()]}
    params = expand({"type": "Scan", "length": 2, "module": block})
    assert [(p.name, p.fold_in, p.stack_at) for p in params] == [
        # each scanned module's first-trace counts are its own parameters' (2 per Dense)
        ("Dense_0.kernel", h(b"Dense_0", b"\x03"), 0),
        ("Dense_0.bias", h(b"Dense_0", b"\x04"), 0),
        ("Dense_1.kernel", h(b"Dense_1", b"\x03"), 0),
        ("Dense_1.bias", h(b"Dense_1", b"\x04"), 0),
    ]


def test_nnx_scan_splits_one_drawn_key_and_counts_each_layer_from_zero() -> None:
    params = expand(scan(), mode="nnx")
    assert keys(params) == [
        ("Dense_0.kernel", 0, ()),
        ("Dense_0.bias", 1, ()),
        ("ScanDense_0.kernel", 0, (("fold_in", 2), ("stack", 3))),  # the split's key is count 2
        ("ScanDense_0.bias", 1, (("fold_in", 2), ("stack", 3))),
        ("Dense_1.kernel", 3, ()),  # the split took one count, whatever the layers drew
        ("Dense_1.bias", 4, ()),
    ]
    assert not any(p.jit for p in params)  # eager, as nnx.vmap is
    assert params[2].key_steps == (("fold_in", 2), ("stack", 3), ("fold_in", 0))


def test_expands_own_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgument) as caught:
        expand(dense(), mode="flax")
    assert str(caught.value) == "mode must be one of linen, nnx, got 'flax'"
    with pytest.raises(InvalidArgument) as caught:
        expand(dense(), fix_rng_separator=1)
    assert str(caught.value) == "fix_rng_separator must be true or false, got 1"
    with pytest.raises(UnknownDtype, match=r"^unknown dtype 'bf16'; Did you mean bfloat16\?"):
        expand(dense(), param_dtype="bf16")
    assert {p.dtype for p in expand(dense(), param_dtype="float16")} == {"float16"}


@pytest.mark.parametrize(
    "desc",
    [
        {"type": "Module", "children": []},
        {"type": "Sequential", "layers": [{"type": "Function", "fn": "relu"}, {"type": "Dropout"}]},
        {"params": []},
    ],
    ids=["empty", "parameter-free", "raw"],
)
def test_a_description_without_parameters_is_refused(desc: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        expand(desc)
    assert str(caught.value) == "model: the description has no parameters"


def test_repeated_names_are_refused_all_of_them_sorted() -> None:
    path = [{"path": p, "initializer": "zeros", "shape": [1]} for p in ("b", "a", "b", "a", "c")]
    with pytest.raises(InvalidArgument) as caught:
        expand({"params": path})
    assert str(caught.value) == "model: parameter names repeat: ['a', 'b']"


def test_a_parameter_stacked_by_a_scan_belongs_to_the_module_the_scan_stacks() -> None:
    """A Scan over a leaf module: its parameters are that module's (a BatchNorm's get their
    PyTorch buffers, a refusal names the type), as over a Module they are its children's."""
    params = expand({"type": "Scan", "length": 2, "module": {"type": "BatchNorm", "features": 3}})
    assert [(p.name, p.module) for p in params] == [("scale", "BatchNorm"), ("bias", "BatchNorm")]
    block = {"type": "Module", "children": [{"type": "Dense", "in_features": 2, "features": 3}]}
    params = expand({"type": "Scan", "length": 2, "module": block}, mode="nnx")
    assert [(p.name, p.module) for p in params] == [("Dense_0.kernel", "Dense"), ("Dense_0.bias", "Dense")]
