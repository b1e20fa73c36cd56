"""jaxinit.protocol.model.layout: the tensors a model's parameters become in the Flax and
PyTorch layouts (names, shapes, conversions, BatchNorm buffers, stacked layers as a
ModuleList), each tensor's key and PRNG settings, how a generated array becomes it (exact
values), and what no file could hold. JAX-free."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from jaxinit.protocol.errors import InvalidArgument, ProtocolError
from jaxinit.protocol.keys import Key
from jaxinit.protocol.model._base import MAX_PARAMS
from jaxinit.protocol.model.derive import Param, expand
from jaxinit.protocol.model.layout import RESERVED_NAME, Output, model_prng, nest, outputs


def param(shape: tuple[int, ...], init_shape: tuple[int, ...] | None = None, **fields: Any) -> Param:
    fields = {"fold_in": 1, "module": "Dense", "role": "kernel", **fields}
    return Param(("m", "kernel"), "normal", {}, shape, init_shape or shape, "float32", **fields)


def counting(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def test_nest_makes_the_flax_tree_of_dotted_names() -> None:
    assert nest({"a.b.kernel": 1, "a.b.bias": 2, "a.scale": 3, "head": 4}) == {
        "a": {"b": {"kernel": 1, "bias": 2}, "scale": 3},
        "head": 4,
    }
    assert nest({"layers.0.kernel": 5}) == {"layers": {"0": {"kernel": 5}}}  # an nnx index is a key too


def test_the_flax_layout_is_each_parameter_as_flax_holds_it() -> None:
    params = expand({"type": "DenseGeneral", "in_features": [2, 3], "features": 4})
    outs = outputs(params)
    assert [(o.name, o.shape, o.convert, o.param) for o in outs] == [
        ("kernel", (2, 3, 4), "", params[0]),
        ("bias", (4,), "", params[1]),
    ]
    assert outputs(params, "flax") == outs


def test_an_unknown_layout_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        outputs(expand({"type": "Dense", "in_features": 1, "features": 1}), "jax")
    assert str(caught.value) == "layout must be one of flax, torch, got 'jax'"


def test_the_torch_layout_names_and_shapes_as_pytorchs_modules() -> None:
    desc = {
        "type": "Module",
        "children": [
            {"type": "Conv", "in_features": 3, "features": 8, "kernel_size": [5, 4]},
            {"type": "Dense", "in_features": 8, "features": 2},
            {"type": "DenseGeneral", "in_features": [2, 3], "features": [4, 5]},
            {"type": "Embed", "num_embeddings": 7, "features": 2},
            {"type": "LayerNorm", "features": 2},
        ],
    }
    assert [(o.name, o.shape, o.convert, o.needs_whole) for o in outputs(expand(desc), "torch")] == [
        ("Conv_0.weight", (8, 3, 5, 4), "conv", True),
        ("Conv_0.bias", (8,), "", False),
        ("Dense_0.weight", (2, 8), "t", True),
        ("Dense_0.bias", (2,), "", False),
        ("DenseGeneral_0.weight", (20, 6), "flat_t", True),
        ("DenseGeneral_0.bias", (20,), "flat", False),
        ("Embed_0.weight", (7, 2), "", False),
        ("LayerNorm_0.weight", (2,), "", False),
        ("LayerNorm_0.bias", (2,), "", False),
    ]
    # a root leaf module's tensors have no module prefix
    assert [o.name for o in outputs(expand({"type": "Dense", "in_features": 1, "features": 1}), "torch")] == [
        "weight",
        "bias",
    ]


def test_batch_norm_gets_pytorchs_buffers_once_after_its_first_parameter() -> None:
    desc = {
        "type": "Module",
        "children": [{"type": "BatchNorm", "features": 3}, {"type": "BatchNorm", "features": 3, "use_scale": False}],
    }
    outs = outputs(expand(desc), "torch")
    assert [(o.name, o.shape, o.dtype, o.param.initializer, o.keyed) for o in outs] == [
        ("BatchNorm_0.weight", (3,), "float32", "ones", True),
        ("BatchNorm_0.running_mean", (3,), "float32", "zeros", False),
        ("BatchNorm_0.running_var", (3,), "float32", "ones", False),
        ("BatchNorm_0.num_batches_tracked", (), "int64", "zeros", False),
        ("BatchNorm_0.bias", (3,), "float32", "zeros", True),
        ("BatchNorm_1.bias", (3,), "float32", "zeros", True),
        ("BatchNorm_1.running_mean", (3,), "float32", "zeros", False),
        ("BatchNorm_1.running_var", (3,), "float32", "ones", False),
        ("BatchNorm_1.num_batches_tracked", (), "int64", "zeros", False),
    ]
    assert outs[1].key(Key(seed=0)) is None and outs[1].param.key_steps == ()


def test_stacked_layers_become_a_module_list_each_with_its_layers_key() -> None:
    desc = {
        "type": "Module",
        "children": [{"type": "Scan", "length": 2, "module": {"type": "Dense", "in_features": 2, "features": 3}}],
    }
    kernel, bias = expand(desc)
    outs = outputs([kernel, bias], "torch")
    assert [(o.name, o.shape, o.param.shape, o.param.key_steps, o.param.stack_at) for o in outs] == [
        ("ScanDense_0.0.weight", (3, 2), (2, 3), (("split", 2, 0), ("fold_in", kernel.fold_in)), 0),
        ("ScanDense_0.1.weight", (3, 2), (2, 3), (("split", 2, 1), ("fold_in", kernel.fold_in)), 0),
        ("ScanDense_0.0.bias", (3,), (3,), (("split", 2, 0), ("fold_in", bias.fold_in)), 0),
        ("ScanDense_0.1.bias", (3,), (3,), (("split", 2, 1), ("fold_in", bias.fold_in)), 0),
    ]
    # the Flax layout keeps the stack: one tensor, one stacked key
    assert [(o.name, o.shape, o.param.key_steps) for o in outputs([kernel, bias])] == [
        ("ScanDense_0.kernel", (2, 2, 3), (("stack", 2), ("fold_in", kernel.fold_in))),
        ("ScanDense_0.bias", (2, 3), (("stack", 2), ("fold_in", bias.fold_in))),
    ]


def test_unstacking_for_torch_is_bounded_before_any_tensor_is_made() -> None:
    block = {"type": "Module", "children": [{"type": "Dense", "in_features": 1, "features": 1}] * 13}
    params = expand({"type": "Scan", "length": 4096, "module": block})
    assert len(outputs(params)) == 26
    with pytest.raises(InvalidArgument) as caught:
        outputs(params, "torch")
    assert str(caught.value) == (
        f"model: in the torch layout its stacked layers make {26 * 4096} tensors, more than {MAX_PARAMS}; "
        "ask for layout 'flax'"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"path": "a.w", "shape": [2, 2, 3], "key": [{"stack": 2}, {"stack": 2}, {"fold_in": 1}]},
            "model: 'a.w': stacked twice (a scan in a scan) has no PyTorch layout; ask for 'flax'",
        ),
        (
            {"path": "a.w", "shape": [3], "torch": ["w", "conv"]},
            "model: 'a.w': the torch conversion 'conv' moves the last two axes first; the parameter has shape [3], "
            "fewer than 2 dimensions",
        ),
        (
            {"path": "a.w", "shape": [3], "torch": ["w", "none"], "module": "ConvTranspose", "key": [{"fold_in": 1}]},
            "model: 'a.w': a ConvTranspose's parameters have no PyTorch layout jaxinit has verified; ask for layout "
            "'flax' and arrange them yourself",
        ),
    ],
)
def test_what_has_no_torch_layout_is_refused_by_name(entry: dict[str, Any], message: str) -> None:
    params = expand({"params": [{"initializer": "normal", **entry}]})
    assert outputs(params)[0].name == "a.w"  # the Flax layout holds it
    with pytest.raises(InvalidArgument) as caught:
        outputs(params, "torch")
    assert str(caught.value) == message


def test_two_parameters_that_would_be_one_tensor_are_refused_naming_both() -> None:
    params = expand(
        {
            "params": [
                {"path": "a.kernel", "initializer": "normal", "shape": [3, 2], "torch": ["weight", "t"]},
                {"path": "a.weight", "initializer": "normal", "shape": [3]},
            ]
        }
    )
    assert [o.name for o in outputs(params)] == ["a.kernel", "a.weight"]
    with pytest.raises(InvalidArgument) as caught:
        outputs(params, "torch")
    assert str(caught.value) == (
        "model: 'a.kernel' and 'a.weight' would both be the tensor 'a.weight' in the torch layout; rename one of "
        "them or ask for layout 'flax'"
    )


@pytest.mark.parametrize("layout", ["flax", "torch"])
def test_no_tensor_may_take_the_name_safetensors_keeps_for_its_metadata(layout: str) -> None:
    params = expand({"params": [{"path": RESERVED_NAME, "initializer": "normal", "shape": [3]}]})
    with pytest.raises(InvalidArgument) as caught:
        outputs(params, layout)
    assert str(caught.value) == (
        f"model: '__metadata__' would be the tensor '__metadata__' in the {layout} layout, a name safetensors "
        "reserves for the file's metadata; rename the parameter or its module"
    )


def test_a_tensors_key_is_the_roots_steps_then_the_parameters() -> None:
    p = param((2,), key_prefix=(("stack", 2),), fold_in=9)
    out = Output("m.kernel", p, (2,))
    root = Key(seed=3, impl="rbg", fold_in=(4,))
    assert out.key(root) == Key(seed=3, impl="rbg", steps=(("fold_in", 4), ("stack", 2), ("fold_in", 9)))
    data = Key(data=(1, 2), fold_in=(5,))
    assert out.key(data) == Key(data=(1, 2), steps=(("fold_in", 5), ("stack", 2), ("fold_in", 9)))
    assert Output("c", param((2,), fold_in=None), (2,)).key(root) is None


@pytest.mark.parametrize(
    ("shape", "init_shape", "convert", "out_shape", "expected"),
    [
        ((2, 3), None, "", (2, 3), lambda a: a),
        ((2, 3), None, "t", (3, 2), lambda a: a.T),
        ((4, 5, 2, 3), None, "conv", (3, 2, 4, 5), lambda a: a.transpose(3, 2, 0, 1)),
        ((5, 2, 3), None, "conv", (3, 2, 5), lambda a: a.transpose(2, 1, 0)),
        ((2, 3, 4), (6, 4), "flat_t", (4, 6), lambda a: a.reshape(6, 4).T),
        ((4, 5), (20,), "flat", (20,), lambda a: a.reshape(20)),
        ((2, 3, 4), (6, 4), "", (2, 3, 4), lambda a: a),  # a DenseGeneral kernel in the Flax layout: a reshape
    ],
)
def test_finish_makes_the_delivered_array_from_the_generated_one(
    shape: tuple[int, ...], init_shape: tuple[int, ...] | None, convert: str, out_shape: tuple[int, ...], expected: Any
) -> None:
    p = param(shape, init_shape)
    generated = counting(p.init_shape)
    got = Output("x", p, out_shape, convert).finish(generated)
    want = np.ascontiguousarray(expected(generated.reshape(shape)))
    assert got.shape == out_shape and got.flags.c_contiguous and got.dtype == np.float32
    assert got.tobytes() == want.tobytes()


def test_a_plan_entry_says_everything_about_a_tensor() -> None:
    p = param((2, 3), (6,), key_prefix=(("fold_in", 2), ("stack", 2)), jit=True, torch=("weight", "t"))
    out = Output("m.weight", p, (3, 2), "t")
    entry = out.describe()
    assert entry == {
        "name": "m.weight",
        "shape": [3, 2],
        "dtype": "float32",
        "initializer": "normal",
        "args": {},
        "init_shape": [6],
        "param": "m.kernel",
        "param_shape": [2, 3],
        "fold_in": 1,
        "module": "Dense",
        "role": "kernel",
        "convert": "t",
        "key_prefix": [{"fold_in": 2}, {"stack": 2}],
        "jit": True,
    }
    back = Output.from_description(json.loads(json.dumps(entry)))
    assert back == dataclasses.replace(out, param=dataclasses.replace(p, torch=("", "")))  # torch: not in a plan


def test_a_plan_entry_from_an_older_server_defaults_its_newer_fields() -> None:
    entry = Output("k", param((2,)), (2,)).describe()
    del entry["key_prefix"], entry["jit"]
    back = Output.from_description(entry)
    assert (back.param.key_prefix, back.param.jit) == ((), False)


@pytest.mark.parametrize(
    "change",
    [{"convert": "rot90"}, {"shape": ["x"]}, {"fold_in": "x"}, {"key_prefix": [{"spin": 1}]}, {"args": 3}],
)
def test_a_plan_entry_this_client_cannot_read_is_a_protocol_error(change: dict[str, Any]) -> None:
    entry = {**Output("k", param((2,)), (2,)).describe(), **change}
    with pytest.raises(ProtocolError, match=r"^a model plan entry this client cannot read \("):
        Output.from_description(entry)


def test_a_plan_entry_without_a_field_it_needs_says_which() -> None:
    entry = Output("k", param((2,)), (2,)).describe()
    del entry["role"]
    with pytest.raises(ProtocolError, match=r"^a model plan entry this client cannot read \(KeyError\('role'\)\): \{"):
        Output.from_description(entry)


def test_model_prng_turns_x64_on_for_a_64_bit_keyed_tensor_only_when_unset() -> None:
    keyed32 = Output("a", param((2,)), (2,))
    keyed64 = Output("b", dataclasses.replace(param((2,)), dtype="int64"), (2,))
    constant64 = Output("c", dataclasses.replace(param(()), dtype="int64", fold_in=None), ())
    assert model_prng([keyed32], True, None)(keyed32) == (True, None)
    assert model_prng([keyed32, constant64], True, None)(keyed32) == (True, None)  # a buffer turns nothing on
    assert model_prng([keyed32, constant64], None, None)(constant64) == (None, None)  # nor takes any setting
    settings = model_prng([keyed32, keyed64], False, None)
    assert (settings(keyed32), settings(keyed64)) == ((False, True), (False, True))
    assert model_prng([keyed64], None, False)(keyed64) == (None, False)  # as asked


def test_a_scanned_batch_norm_has_its_buffers_in_every_layer() -> None:
    params = expand({"type": "Scan", "length": 2, "module": {"type": "BatchNorm", "features": 3, "use_bias": False}})
    assert [o.name for o in outputs(params, "torch")] == [
        "0.weight",
        "0.running_mean",
        "0.running_var",
        "0.num_batches_tracked",
        "1.weight",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    transposed = expand(
        {
            "type": "Scan",
            "length": 2,
            "module": {"type": "ConvTranspose", "in_features": 2, "features": 2, "kernel_size": 1},
        }
    )
    with pytest.raises(
        InvalidArgument, match=r"^model: '0\.kernel': a ConvTranspose's parameters have no PyTorch layout"
    ):
        outputs(transposed, "torch")
