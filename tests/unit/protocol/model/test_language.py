"""jaxinit.protocol.model.language: a description parsed into the tree of modules, parameters
and rng draws (names as linen/nnx give them, creation order, inherited dtypes), and what
it refuses, by place: unknown types, misplaced ones, bad names, Scans that cannot be exact,
nesting past the bound. Key derivation over the tree is test_derive.py's. JAX-free."""

from __future__ import annotations

from typing import Any

import pytest

from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.model._base import MAX_DEPTH, MAX_NAME_CHARS, Draw, Leaf, Node
from jaxinit.protocol.model._leaves import LEAF_MODULES
from jaxinit.protocol.model.language import MAX_SCAN_LENGTH, MODULE_TYPES, parse


def dense(**fields: Any) -> dict[str, Any]:
    return {"type": "Dense", "in_features": 2, "features": 3, **fields}


def tree(node: Node) -> list[tuple[str, Any]]:
    """A parsed node's items, compact: a child as its type and items, a leaf as its shape and dtype."""
    out: list[tuple[str, Any]] = []
    for name, item in node.items:
        if isinstance(item, Node):
            out.append((name, (item.type, tree(item))))
        elif isinstance(item, Leaf):
            out.append((name, (item.shape, item.dtype)))
        else:
            out.append((name, item))
    return out


def parsed(desc: Any, mode: str = "linen", dtype: str = "float32") -> Node:
    return parse(desc, "model", dtype, 0, mode)


def refusal(desc: Any, mode: str = "linen") -> str:
    with pytest.raises(InvalidArgument) as caught:
        parsed(desc, mode)
    return str(caught.value)


DENSE = [("kernel", ((2, 3), "float32")), ("bias", ((3,), "float32"))]


def test_every_module_type_is_known() -> None:
    # the leaf modules (their list pinned in test_leaves.py) first, then the containers
    assert (
        *LEAF_MODULES,
        "MultiHeadAttention",
        "Module",
        "Sequential",
        "Function",
        "Dropout",
        "Einsum",
        "LoRALinear",
        "Scan",
    ) == MODULE_TYPES


def test_a_leaf_module_is_its_parameters() -> None:
    node = parsed(dense())
    assert (node.type, tree(node)) == ("Dense", DENSE)


def test_a_modules_unnamed_children_are_named_per_class_as_linen_does() -> None:
    block = {"type": "Module", "class": "Block", "children": [dense()]}
    node = parsed(
        {
            "type": "Module",
            "children": [
                dense(),
                block,
                dense(name="head"),
                dense(),
                {"type": "Module", "children": [dense()]},
                block,
                {"type": "Param", "name": "w", "shape": [4], "initializer": "zeros"},
            ],
        }
    )
    assert tree(node) == [
        ("Dense_0", ("Dense", DENSE)),
        ("Block_0", ("Module", [("Dense_0", ("Dense", DENSE))])),
        ("head", ("Dense", DENSE)),  # a named child takes no number
        ("Dense_1", ("Dense", DENSE)),
        ("Module_0", ("Module", [("Dense_0", ("Dense", DENSE))])),
        ("Block_1", ("Module", [("Dense_0", ("Dense", DENSE))])),
        ("w", ((4,), "float32")),  # a Param is the module's own parameter, not a child
    ]


def test_sequential_names_layers_by_position_per_mode() -> None:
    desc = {"type": "Sequential", "layers": [dense(), {"type": "Function", "fn": "relu"}, dense()]}
    assert tree(parsed(desc)) == [
        ("layers_0", ("Dense", DENSE)),
        ("layers_1", ("Function", [])),  # a parameter-free layer takes its position all the same
        ("layers_2", ("Dense", DENSE)),
    ]
    assert [name for name, _ in parsed(desc, "nnx").items] == ["layers.0", "layers.1", "layers.2"]
    assert refusal({"type": "Sequential", "layers": [dense(name="x")]}) == (
        "model.layers[0]: layers of a Sequential are named by position; drop 'name'"
    )


def test_param_dtype_is_inherited_down_the_tree_unless_a_module_names_its_own() -> None:
    node = parsed({"type": "Module", "param_dtype": "bfloat16", "children": [dense(), dense(param_dtype="float16")]})
    assert [(name, tree(child)[0][1][1]) for name, child in node.items] == [
        ("Dense_0", "bfloat16"),
        ("Dense_1", "float16"),
    ]
    assert tree(parsed(dense(), dtype="float64"))[0] == ("kernel", ((2, 3), "float64"))


def test_dropout_draws_from_its_stream_in_nnx_only_when_given_rngs() -> None:
    assert parsed({"type": "Dropout", "rate": 0.1, "rngs": True}, "nnx").items == [
        ("", Draw("dropout", "model", "Dropout"))
    ]
    assert parsed({"type": "Dropout", "rngs": True, "rng_collection": "noise"}, "nnx").items == [
        ("", Draw("noise", "model", "Dropout"))
    ]
    assert parsed({"type": "Dropout", "rate": 0.1}, "nnx").items == []
    assert parsed({"type": "Dropout", "rate": 0.1, "rngs": True}, "linen").items == []  # linen's takes it when applied
    assert refusal({"type": "Dropout", "rng_collection": ""}) == "model: 'rng_collection' must be a stream name, got ''"
    assert refusal({"type": "Dropout", "rate": 2}) == "model: 'rate' must be a number in [0, 1], got 2"


def test_attention_is_four_dense_generals_and_in_nnx_a_dropout_draw() -> None:
    desc = {
        "type": "MultiHeadAttention",
        "in_features": 8,
        "num_heads": 2,
        "qkv_features": 4,
        "out_features": 6,
        "use_bias": False,
        "dropout_rate": 0.1,
    }
    node = parsed(desc, "nnx")
    assert tree(node) == [
        ("query", ("DenseGeneral", [("kernel", ((8, 2, 2), "float32"))])),
        ("key", ("DenseGeneral", [("kernel", ((8, 2, 2), "float32"))])),
        ("value", ("DenseGeneral", [("kernel", ((8, 2, 2), "float32"))])),
        ("out", ("DenseGeneral", [("kernel", ((2, 2, 6), "float32"))])),
        ("", Draw("dropout", "model", "MultiHeadAttention")),
    ]
    assert node.cls == "MultiHeadAttention"
    assert [name for name, _ in parsed(desc, "linen").items] == ["query", "key", "value", "out"]
    assert [name for name, _ in parsed({**desc, "keep_rngs": False}, "nnx").items] == ["query", "key", "value", "out"]
    assert [name for name, _ in parsed({**desc, "dropout_rate": 0.0}, "nnx").items] == ["query", "key", "value", "out"]


def test_attention_defaults_to_in_features_and_names_its_class() -> None:
    node = parsed({"type": "MultiHeadAttention", "in_features": 6, "num_heads": 3, "class": "SelfAttention"})
    assert node.cls == "SelfAttention"
    query, out = tree(node)[0][1][1], tree(node)[3][1][1]
    assert query == [("kernel", ((6, 3, 2), "float32")), ("bias", ((3, 2), "float32"))]
    assert out == [("kernel", ((3, 2, 6), "float32")), ("bias", ((6,), "float32"))]
    assert refusal({"type": "MultiHeadAttention", "in_features": 8, "num_heads": 2, "class": "Attention"}) == (
        "model: 'class' is one of MultiHeadAttention, MultiHeadDotProductAttention, SelfAttention (the linen class, "
        "for its automatic name), got 'Attention'"
    )
    assert refusal({"type": "MultiHeadAttention", "in_features": 10, "num_heads": 3}) == (
        "model: qkv_features 10 must be a multiple of num_heads 3"
    )


def test_lora_linear_keeps_its_lora_child_in_its_own_dtype() -> None:
    desc = {"type": "LoRALinear", "in_features": 3, "features": 4, "lora_rank": 2, "param_dtype": "bfloat16"}
    assert tree(parsed(desc, "nnx")) == [
        ("kernel", ((3, 4), "bfloat16")),
        ("bias", ((4,), "bfloat16")),
        ("lora", ("LoRA", [("lora_a", ((3, 2), "float32")), ("lora_b", ((2, 4), "float32"))])),  # Flax's default
    ]
    node = parsed({**desc, "lora_param_dtype": "float16", "b_initializer": "ones"}, "nnx")
    lora = node.items[2][1]
    assert isinstance(lora, Node)
    assert [(leaf.dtype, leaf.init[0]) for _, leaf in lora.items if isinstance(leaf, Leaf)] == [
        ("float16", "he_uniform"),
        ("float16", "ones"),
    ]
    assert refusal(desc) == "model: LoRALinear is an nnx module (linen has none); describe it with mode 'nnx'"


def test_a_scan_holds_its_modules_items_and_names_itself_after_it() -> None:
    node = parsed({"type": "Scan", "length": 3, "module": dense()})
    assert (node.type, node.length, node.transform, node.cls, tree(node)) == ("Scan", 3, "scan", "ScanDense", DENSE)
    block = {"type": "Module", "class": "Block", "children": [dense()]}
    node = parsed({"type": "Scan", "length": 2, "module": block, "transform": "vmap"})
    assert (node.transform, node.cls, tree(node)) == ("vmap", "ScanBlock", [("Dense_0", ("Dense", DENSE))])
    assert parsed({"type": "Scan", "length": 2, "module": dense()}, "nnx").transform == "vmap"
    within = parsed({"type": "Module", "children": [{"type": "Scan", "length": 2, "module": dense()}]})
    assert [name for name, _ in within.items] == ["ScanDense_0"]


@pytest.mark.parametrize(
    ("desc", "mode", "message"),
    [
        (
            {"type": "Scan", "length": 2, "module": dense(), "transform": "scan"},
            "nnx",
            "model: a Scan's 'transform' is one of vmap in nnx (linen: nn.scan or nn.vmap; nnx: split_rngs + "
            "nnx.vmap), got 'scan'",
        ),
        (
            {"type": "Scan", "length": 2, "module": dense(), "transform": "pmap"},
            "linen",
            "model: a Scan's 'transform' is one of scan, vmap in linen (linen: nn.scan or nn.vmap; nnx: split_rngs + "
            "nnx.vmap), got 'pmap'",
        ),
        (
            {"type": "Scan", "length": MAX_SCAN_LENGTH + 1, "module": dense()},
            "linen",
            f"model: a Scan stacks at most {MAX_SCAN_LENGTH} layers, got {MAX_SCAN_LENGTH + 1}",
        ),
        ({"type": "Scan", "length": 0, "module": dense()}, "linen", "model: 'length' must be an int >= 1, got 0"),
        (
            {"type": "Scan", "length": 2},
            "linen",
            "model: a Scan needs the 'module' it stacks (a module description)",
        ),
        (
            {"type": "Scan", "length": 2, "module": [dense()]},
            "linen",
            "model: a Scan needs the 'module' it stacks (a module description)",
        ),
        (
            {
                "type": "Scan",
                "length": 2,
                "module": {"type": "Module", "children": [{"type": "Scan", "length": 2, "module": dense()}]},
            },
            "linen",
            "model: a Scan inside a Scan is not supported (its keys are not verified)",
        ),
        (
            {"type": "Scan", "length": 2, "module": {"type": "Param", "shape": [1], "initializer": "zeros"}},
            "linen",
            "model.module: a Param belongs among the children of a Module",
        ),
    ],
)
def test_a_scan_that_cannot_be_exact_is_refused(desc: dict[str, Any], mode: str, message: str) -> None:
    assert refusal(desc, mode) == message


@pytest.mark.parametrize(
    ("child", "message"),
    [
        (dense(name="a.b"), "model: names must be non-empty strings without '.' or '/', got 'a.b'"),
        (dense(name="a/b"), "model: names must be non-empty strings without '.' or '/', got 'a/b'"),
        (dense(name=""), "model: names must be non-empty strings without '.' or '/', got ''"),
        (dense(name=3), "model: names must be non-empty strings without '.' or '/', got 3"),
        (
            {"type": "Param", "shape": [1], "initializer": "zeros"},
            "model.children[1]: a Param needs a 'name'",
        ),
        (
            {"type": "Param", "name": 7, "shape": [1], "initializer": "zeros"},
            "model.children[1]: a Param needs a 'name'",
        ),
        (dense(name="x"), "model: names must be unique among siblings; repeated: ['x']"),
        # an automatic name counts as given: a child named as linen would name another clashes
        (
            {"type": "Param", "name": "Dense_0", "shape": [1], "initializer": "zeros"},
            "model: names must be unique among siblings; repeated: ['Dense_0']",
        ),
    ],
)
def test_a_childs_name_is_checked_among_its_siblings(child: dict[str, Any], message: str) -> None:
    first = dense(name="x") if message.endswith("['x']") else dense()
    assert refusal({"type": "Module", "children": [first, child]}) == message


def test_names_are_bounded_in_length() -> None:
    longest = "n" * MAX_NAME_CHARS
    assert parsed({"type": "Module", "children": [dense(name=longest)]}).items[0][0] == longest
    message = refusal({"type": "Module", "children": [dense(name="n" * (MAX_NAME_CHARS + 1))]})
    assert message.startswith(f"model: a name has at most {MAX_NAME_CHARS} characters, got 'nnn")
    assert message.endswith(f"... ({MAX_NAME_CHARS + 1} characters)")


def test_a_type_is_needed_and_known() -> None:
    assert refusal({"features": 1}) == (
        f"model: a module needs a 'type' (one of {', '.join(MODULE_TYPES)}), or a description in the raw form a "
        "'params' list; got the field(s) ['features']"
    )
    assert refusal({"type": "Dens"}) == (
        f"model: unknown module type 'Dens'; Did you mean Dense, Einsum? known: {', '.join(MODULE_TYPES)}"
    )
    assert refusal({"type": "sequential"}).startswith(
        "model: unknown module type 'sequential'; Did you mean Sequential?"  # case is a typo too
    )


def test_a_type_stands_where_its_place_is() -> None:
    assert refusal({"type": "Function", "fn": "relu"}) == (
        "model: a Function (a parameter-free layer) belongs in a Sequential's layers"
    )
    assert refusal({"type": "Sequential", "layers": [{"type": "Param", "shape": [1], "initializer": "zeros"}]}) == (
        "model.layers[0]: a Param belongs among the children of a Module"
    )
    function = parse({"type": "Function", "fn": "gelu"}, "s.layers[0]", "float32", 1, "linen", parent="Sequential")
    assert function.items == []


def test_unknown_fields_of_a_composite_module_are_refused() -> None:
    assert refusal({"type": "Module", "children": [dense()], "colour": 1}) == (
        "model: unknown field(s) ['colour'] for Module; its fields: children, class, name, param_dtype, type"
    )
    assert refusal({"type": "Module", "children": [dense(colour=1)]}).startswith(
        "model.children[0]: unknown field(s) ['colour'] for Dense;"
    )


def test_nesting_stops_at_the_bound_before_the_node_is_read() -> None:
    desc: Any = dense()
    for _ in range(MAX_DEPTH):
        desc = {"type": "Module", "children": [desc]}
    assert len(parsed(desc).items) == 1  # MAX_DEPTH levels below the root: the deepest allowed
    assert refusal({"type": "Module", "children": [desc]}).endswith(f": modules nest deeper than {MAX_DEPTH} levels")
    with pytest.raises(InvalidArgument) as caught:
        parse("not even a module", "model", "float32", MAX_DEPTH + 1, "linen")
    assert str(caught.value) == f"model: modules nest deeper than {MAX_DEPTH} levels"
