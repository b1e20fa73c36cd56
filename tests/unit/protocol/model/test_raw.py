"""jaxinit.protocol.model.raw: the raw form (parameters by dotted path, as an exported plan
writes them): what it is, its jit flag, the tree its paths make, an exported plan's explicit
fields (key, init_shape, torch, stack_at, module, jit) and their refusals, by entry.
The bounds at scale are test_expansion_scale.py's. JAX-free."""

from __future__ import annotations

from typing import Any

import pytest

from jaxinit.protocol.errors import InvalidArgument, UnknownDtype
from jaxinit.protocol.model._base import Leaf, Node
from jaxinit.protocol.model.derive import expand
from jaxinit.protocol.model.raw import is_raw, plan_jit, raw


def entry(path: Any, initializer: str = "normal", shape: list[int] | None = None, **fields: Any) -> dict[str, Any]:
    return {"path": path, "initializer": initializer, "shape": [2] if shape is None else shape, **fields}


def refusal(*entries: Any, **form: Any) -> str:
    with pytest.raises(InvalidArgument) as caught:
        expand({"params": list(entries), **form})
    return str(caught.value)


def test_is_raw_is_a_params_list_and_no_type() -> None:
    assert is_raw({"params": []})
    assert not is_raw({"params": [], "type": "Module"})
    assert not is_raw({"type": "Dense"})
    assert not is_raw([{"params": []}])


def test_plan_jit_is_the_raw_forms_flag() -> None:
    assert plan_jit({"params": [], "jit": True}) is True
    assert plan_jit({"params": []}) is False
    assert plan_jit({"type": "Dense", "jit": True}) is False  # a module description has no such flag
    with pytest.raises(InvalidArgument) as caught:
        plan_jit({"params": [], "jit": "yes"})
    assert str(caught.value) == "model.jit must be true or false, got 'yes'"


def test_paths_make_a_tree_of_plain_modules_in_the_order_listed() -> None:
    root = raw({"params": [entry("enc.l0.w"), entry("head", "zeros", [3]), entry("enc.b")]}, "float32")
    assert root.type == "Module"
    (enc_name, enc), (head_name, head) = root.items
    assert (enc_name, head_name) == ("enc", "head")
    assert isinstance(enc, Node) and isinstance(head, Leaf)
    assert [(name, type(item).__name__) for name, item in enc.items] == [("l0", "Node"), ("b", "Leaf")]
    assert (head.role, head.init, head.shape, head.dtype, head.torch) == (
        "head",
        ("zeros", {}),
        (3,),
        "float32",
        ("head", ""),
    )


def test_a_raw_forms_parameters_as_expand_gives_them() -> None:
    params = expand({"params": [entry("a.w"), entry("b.w", dtype="bfloat16")], "param_dtype": "float16", "jit": True})
    assert [(p.name, p.dtype, p.jit, p.module, p.role, p.key_prefix) for p in params] == [
        ("a.w", "float16", True, "Module", "w", ()),
        ("b.w", "bfloat16", True, "Module", "w", ()),
    ]
    # without explicit keys, each is derived as linen derives a parameter of its module
    w = {"type": "Param", "name": "w", "shape": [2], "initializer": "normal"}
    described = expand(
        {
            "type": "Module",
            "param_dtype": "float16",
            "children": [
                {"type": "Module", "name": "a", "children": [w]},
                {"type": "Module", "name": "b", "children": [{**w, "param_dtype": "bfloat16"}]},
            ],
        }
    )
    assert [(p.name, p.fold_in, p.dtype) for p in params] == [(p.name, p.fold_in, p.dtype) for p in described]


def test_an_exported_plans_explicit_fields() -> None:
    (p,) = expand(
        {
            "params": [
                entry(
                    "blocks.Dense_0.kernel",
                    shape=[2, 3, 4],
                    key=[{"stack": 2}, {"fold_in": 5}],
                    init_shape=[2, 12],
                    torch=["weight", "t"],
                    stack_at=1,
                    module="Dense",
                    jit=True,
                )
            ]
        }
    )
    assert (p.name, p.shape, p.init_shape, p.fold_in, p.key_prefix, p.torch, p.stack_at, p.module, p.jit) == (
        "blocks.Dense_0.kernel",
        (2, 3, 4),
        (2, 12),
        5,
        (("stack", 2),),
        ("weight", "t"),
        1,
        "Dense",
        True,
    )
    assert p.key_steps == (("stack", 2), ("fold_in", 5))


def test_keys_are_given_to_all_or_none_but_constants_need_none() -> None:
    params = expand({"params": [entry("a", key=[{"fold_in": 5}]), entry("b", "zeros")]})
    assert [p.fold_in for p in params][0] == 5
    assert refusal(entry("a", key=[{"fold_in": 5}]), entry("b")) == (
        "model.params[1]: give every parameter of the raw form a 'key', or none"
    )
    assert refusal(entry("a"), entry("b", key=[{"fold_in": 5}])) == (
        "model.params[1]: give every parameter of the raw form a 'key', or none"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"key": []}, "'key' is the steps from the root key, the last a fold_in; got []"),
        (
            {"key": [{"split": [2, 1]}]},
            "'key' is the steps from the root key, the last a fold_in; got [{'split': [2, 1]}]",
        ),
        (
            {"key": [{"stack": 3}, {"fold_in": 5}]},
            "a key with stack steps [3] needs a shape that starts with them",
        ),
        ({"init_shape": [3]}, "'init_shape' [3] has another size than 'shape'"),
        ({"init_shape": (2,)}, "'init_shape' must be a list of non-negative ints, got (2,)"),
        ({"init_shape": [-2]}, "'init_shape' must be a sequence of non-negative ints, got [-2]"),
        (
            {"torch": ["weight", "rot90"]},
            "'torch' is [name, conversion], conversion one of ('', 't', 'conv', 'flat_t', 'flat', 'none'), "
            "got ['weight', 'rot90']",
        ),
        (
            {"torch": ["", "t"]},
            "'torch' is [name, conversion], conversion one of ('', 't', 'conv', 'flat_t', 'flat', 'none'), "
            "got ['', 't']",
        ),
        ({"stack_at": -1}, "'stack_at' must be a small non-negative int, got -1"),
        ({"stack_at": True}, "'stack_at' must be a small non-negative int, got True"),
        ({"stack_at": 64}, "'stack_at' must be a small non-negative int, got 64"),
        (
            {"stack_at": 2},
            "'stack_at' 2 puts the layer index after the parameter's own name; it counts the module names before "
            "the index, at most 1 for the path 'a.w'",
        ),
        ({"jit": "yes"}, "'jit' must be true or false, got 'yes'"),
        ({"shpe": [1]}, "unknown field(s) ['shpe'] for Param; Did you mean shape? its fields: "),
    ],
)
def test_an_entrys_explicit_fields_are_checked_by_entry(fields: dict[str, Any], message: str) -> None:
    got = refusal(entry("ok"), entry("a.w", **fields))
    assert got.startswith(f"model.params[1]: {message}")


def test_an_unknown_module_type_is_refused() -> None:
    message = refusal(entry("a.w", module="Linear"))
    assert message.startswith("model.params[0]: 'module' is one of Dense, DenseGeneral,")
    assert message.endswith(", got 'Linear'")


@pytest.mark.parametrize("path", [None, 3, "", "a.", ".a", "a..b", ["a", "b"]])
def test_a_path_is_a_dotted_name(path: Any) -> None:
    assert refusal(entry(path)) == (
        f"model.params[0]: 'path' must be a dotted name such as 'encoder.kernel', got {path!r}"
    )


def test_the_raw_forms_own_fields() -> None:
    assert refusal(entry("a"), parm_dtype="float16") == (
        "model: unknown field(s) ['parm_dtype'] in the raw form; Did you mean param_dtype? its fields: params, "
        "param_dtype, jit"
    )
    assert refusal(entry("a"), x=1, y=2) == (
        "model: unknown field(s) ['x', 'y'] in the raw form; its fields: params, param_dtype, jit"
    )
    with pytest.raises(InvalidArgument) as caught:
        expand({"params": "a.w"})
    assert str(caught.value) == "model.params must be a list of parameters"
    assert refusal("a.w") == "model.params[0]: a parameter must be an object, got 'a.w'"
    assert refusal(entry("a"), jit=1) == "model.jit must be true or false, got 1"


def test_dtypes_are_the_forms_then_each_entrys() -> None:
    with pytest.raises(UnknownDtype, match=r"^unknown dtype 'bf16'; Did you mean bfloat16\?"):
        expand({"params": [entry("a")], "param_dtype": "bf16"})
    with pytest.raises(UnknownDtype, match=r"^model\.params\[0\]: dtype: unknown dtype 'bf16'"):
        expand({"params": [entry("a", dtype="bf16")]})  # the entry's own word for it
    with pytest.raises(UnknownDtype, match=r"^model\.params\[0\]: param_dtype: unknown dtype 'bf16'"):
        expand({"params": [entry("a", param_dtype="bf16")]})  # dtype's alias
    assert [p.dtype for p in expand({"params": [entry("a", dtype="float16", param_dtype="bf16")]})] == ["float16"]
    assert [p.dtype for p in expand({"params": [entry("a")]}, param_dtype="float64")] == ["float64"]


def test_a_name_is_a_module_or_a_parameter_never_both() -> None:
    """No Flax tree holds both (nest would drop one): refused in either order."""
    assert refusal(entry("a.w"), entry("a.w.x")) == "model.params[1]: 'w' is a parameter, not a module"
    assert refusal(entry("a.w.x"), entry("a.w")) == "model.params[1]: 'w' is a module, not a parameter"
    assert refusal(entry("a.x"), entry("a")) == "model.params[1]: 'a' is a module, not a parameter"


def test_an_entrys_module_is_kept_without_a_key() -> None:
    scale = entry("bn.scale", "ones", [3], module="BatchNorm", torch=["weight", ""])
    bias = entry("bn.bias", "zeros", [3], module="BatchNorm", torch=["bias", ""])
    params = expand({"params": [scale, bias]})
    assert [p.module for p in params] == ["BatchNorm", "BatchNorm"]
    keyed = expand({"params": [{**scale, "key": [{"fold_in": 1}]}, {**bias, "key": [{"fold_in": 2}]}]})
    assert [p.module for p in keyed] == ["BatchNorm", "BatchNorm"]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("x", "derive must be a list of at most 64 steps, got 'x'"),
        ([{"fold_in": -1}], "fold_in takes a uint32 (0 <= x < 2**32), got (-1,)"),
        ([{"spin": 1}, {"fold_in": 1}], 'a derive step is {"fold_in": x}, {"split": [num, index]} or {"stack": num}'),
    ],
)
def test_a_key_that_is_no_key_is_refused_by_entry(key: Any, message: str) -> None:
    assert refusal(entry("ok", key=[{"fold_in": 0}]), entry("a.w", key=key)).startswith(
        f"model.params[1]: 'key': {message}"
    )
