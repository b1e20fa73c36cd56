"""The JSON Schemas of model descriptions and plans (jaxinit.protocol.schemas) against the
parser they describe (the expansion, which the server runs): valid draft-07, the same closed
sets and fields as the parser, never refusing what the parser accepts (hand-picked cases and
mutations of full descriptions), and messages that name the JSON path."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxinit import models as m
from jaxinit.protocol import schemas
from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPE_NAMES
from jaxinit.protocol.errors import InvalidArgument, JaxinitError
from jaxinit.protocol.expansion import MODULE_TYPES, expand

DESCRIPTION = schemas.load(schemas.DESCRIPTION)
DEFINITIONS = DESCRIPTION["definitions"]
REFERENCE = {name: jsonschema.Draft7Validator(schemas.load(name)) for name in schemas.SCHEMAS}

DENSE = {"type": "Dense", "in_features": 3, "features": 2}
INITS = {"kernel_init": "he_normal", "use_bias": True, "bias_init": {"initializer": "normal", "args": {"stddev": 0.1}}}
NORM = {"features": 8, "use_scale": True, "scale_init": "ones"}
# Every module type with every field its schema lists set (root fields too), accepted by the
# parser in the mode named: what the field and mutation tests start from.
FULL: dict[str, tuple[str, dict[str, Any]]] = {
    "Dense": ("linen", {**DENSE, **INITS}),
    "DenseGeneral": ("linen", {"type": "DenseGeneral", "in_features": [2, 3], "features": [4, 2], **INITS}),
    "Conv": (
        "linen",
        {"type": "Conv", "in_features": 4, "features": 6, "kernel_size": [3, 3], "feature_group_count": 2, **INITS},
    ),
    "ConvTranspose": (
        "linen",
        {"type": "ConvTranspose", "in_features": 4, "features": 6, "kernel_size": 3, "transpose_kernel": True, **INITS},
    ),
    "LoRA": (
        "nnx",
        {
            "type": "LoRA",
            "in_features": 4,
            "lora_rank": 2,
            "out_features": 3,
            "a_initializer": "he_uniform",
            "b_initializer": "zeros",
        },
    ),
    "LoRALinear": (
        "nnx",
        {
            "type": "LoRALinear",
            "in_features": 4,
            "features": 3,
            "lora_rank": 2,
            "a_initializer": "he_uniform",
            "b_initializer": None,
            "lora_param_dtype": "float16",
            **INITS,
        },
    ),
    "Embed": ("linen", {"type": "Embed", "num_embeddings": 10, "features": 4, "embedding_init": "normal"}),
    "LayerNorm": ("linen", {"type": "LayerNorm", **NORM, "use_bias": True, "bias_init": "zeros"}),
    "RMSNorm": ("linen", {"type": "RMSNorm", **NORM}),
    "BatchNorm": ("linen", {"type": "BatchNorm", **NORM, "use_bias": True, "bias_init": "zeros"}),
    "GroupNorm": ("linen", {"type": "GroupNorm", **NORM, "num_groups": 4, "use_bias": True, "bias_init": "zeros"}),
    "MultiHeadAttention": (
        "linen",
        {
            "type": "MultiHeadAttention",
            "class": "SelfAttention",
            "in_features": 8,
            "num_heads": 2,
            "qkv_features": 8,
            "out_features": 6,
            "dropout_rate": 0.1,
            "keep_rngs": True,
            **INITS,
        },
    ),
    "Einsum": (
        "linen",
        {"type": "Einsum", "kernel_shape": [4, 5], "einsum_str": "ab,bc->ac", "use_bias": True, **INITS},
    ),
    "Dropout": (
        "nnx",
        {
            "type": "Module",
            "rng_streams": ["default"],
            "children": [{"type": "Dropout", "rate": 0.2, "rng_collection": "dropout", "rngs": True}, DENSE],
        },
    ),
    "Scan": ("linen", {"type": "Scan", "length": 3, "transform": "vmap", "module": {**DENSE, "name": "ignored"}}),
    "Module": (
        "linen",
        {
            "type": "Module",
            "class": "Block",
            "children": [
                {**DENSE, "name": "up"},
                {"type": "Param", "name": "p", "shape": [2], "initializer": "normal", "args": {"stddev": 0.5}},
                {**DENSE, "name": None},
            ],
        },
    ),
    "Sequential": (
        "linen",
        {"type": "Sequential", "layers": [DENSE, {"type": "Function", "fn": "relu", "param_dtype": None}, DENSE]},
    ),
    "raw": (
        "linen",
        {
            "params": [
                {
                    "path": "layers.up.kernel",
                    "shape": [2, 3, 4],
                    "initializer": "normal",
                    "args": {"stddev": 0.02},
                    "dtype": "float32",
                    "param_dtype": "float32",
                    "key": [{"stack": 2}, {"split": [4, 1]}, {"fold_in": 7}],
                    "jit": True,
                    "init_shape": [2, 12],
                    "torch": ["weight", "t"],
                    "stack_at": 1,
                    "module": "Dense",
                    "type": "ignored",
                    "name": "ignored",
                },
                {"path": "layers.up.bias", "shape": [2, 4], "initializer": "zeros", "dtype": "float32"},
            ],
            "param_dtype": "float32",
            "jit": False,
            "rng_streams": ["params"],
        },
    ),
}
for _, _full in FULL.values():
    if "type" in _full:
        _full.setdefault("name", "root")
        _full.setdefault("param_dtype", "float32")


def accepted(description: Any) -> bool:
    """Whether the parser accepts ``description`` in either mode (the schema knows no mode)."""
    for mode in ("linen", "nnx"):
        try:
            expand(copy.deepcopy(description), mode=mode)
        except JaxinitError:
            continue
        return True
    return False


def schema_accepts(description: Any, name: str = schemas.DESCRIPTION) -> bool:
    """The shipped validator's verdict, which must be the reference implementation's."""
    try:
        schemas.check(description, name)
        verdict = True
    except InvalidArgument:
        verdict = False
    assert verdict == REFERENCE[name].is_valid(description), f"fastjsonschema and jsonschema disagree: {description}"
    return verdict


def test_both_schemas_are_valid_draft7_and_stand_alone() -> None:
    for name in schemas.SCHEMAS:
        schema = schemas.load(name)
        jsonschema.Draft7Validator.check_schema(schema)
        refs = re.findall(r'"\$ref": "([^"]*)"', schemas.text(name))
        assert refs and all(ref.startswith("#/definitions/") for ref in refs), "a reference leaves the file"
        assert all(ref.removeprefix("#/definitions/") in schema["definitions"] for ref in refs)


def test_the_plan_schema_is_the_descriptions_plan() -> None:
    """plan.schema.json is derived, never edited: regenerate it with plan_schema() after
    changing the description schema."""
    derived = schemas.plan_schema(DESCRIPTION)
    assert schemas.load(schemas.PLAN) == derived, (
        "plan.schema.json is out of date; write json.dumps(schemas.plan_schema(description), indent=2) to it"
    )


def test_unknown_schema_names_get_the_list() -> None:
    with pytest.raises(KeyError, match=r"Did you mean plan.schema.json\?.*model-description.schema.json"):
        schemas.text("plan.json")


def test_the_closed_sets_are_the_protocols() -> None:
    assert set(DEFINITIONS["dtype"]["enum"]) == {*DTYPE_NAMES, "float", "double", "half", "bool_"}
    assert DEFINITIONS["initializerName"]["enum"] == sorted(CATALOG)
    assert {*DEFINITIONS["anyModule"]["properties"]["type"]["enum"], "Param", "Function"} == set(MODULE_TYPES)
    assert set(DEFINITIONS["planParam"]["properties"]["module"]["enum"]) == set(MODULE_TYPES)
    assert set(MODULE_TYPES) <= set(DEFINITIONS), "every module type has a definition"


def _fields_the_parser_lists(description: dict[str, Any], mode: str) -> set[str]:
    """The fields the parser names when one it does not know is added (its "its fields: ...")."""
    with pytest.raises(InvalidArgument) as info:
        expand({**description, "zz_unknown": 1}, mode=mode)
    found = re.search(r"its fields: ([\w, ]+)$", info.value.message)
    assert found, info.value.message
    return {f.strip() for f in found.group(1).split(",")}


@pytest.mark.parametrize("kind", sorted(FULL))
def test_full_descriptions_pass_both_and_the_fields_agree(kind: str) -> None:
    mode, description = FULL[kind]
    expand(copy.deepcopy(description), mode=mode)  # the parser accepts it
    assert schema_accepts(description)
    if kind == "raw":
        listed = _fields_the_parser_lists(description, mode) | {"rng_streams"}
        assert listed == set(DEFINITIONS["plan"]["properties"])
        entry = {**description["params"][0], "zz_unknown": 1}
        with pytest.raises(InvalidArgument, match="its fields: (.*)$") as info:
            expand({"params": [entry]}, mode=mode)
        reader = {f.strip() for f in info.value.message.rsplit("its fields: ", 1)[1].split(",")}
        explicit = {"path", "dtype", "key", "jit", "init_shape", "torch", "stack_at", "module"}
        assert reader | explicit == set(DEFINITIONS["planParam"]["properties"])
        return
    if kind == "Dropout":
        description = description["children"][0]
        mode = "linen"
    listed = _fields_the_parser_lists(description, mode)
    schema_fields = set(DEFINITIONS[kind]["properties"]) - {"rng_streams"}
    assert listed == schema_fields, f"{kind}: the parser reads {sorted(listed)}, the schema {sorted(schema_fields)}"


def test_children_params_and_functions_have_the_parsers_fields() -> None:
    param = {"type": "Param", "name": "p", "shape": [2], "initializer": "zeros", "args": None, "param_dtype": None}
    listed = _fields_the_parser_lists({"type": "Module", "children": [param]}, "linen")
    assert listed == {"type", "name", "class", "children", "param_dtype"}  # the Module's own
    for kind, parent in (
        ("Param", {"type": "Module", "children": [{**param, "zz": 1}]}),
        ("Function", {"type": "Sequential", "layers": [{"type": "Function", "fn": "relu", "zz": 1}]}),
    ):
        with pytest.raises(InvalidArgument, match=r"its fields: (.*)$") as info:
            expand(parent)
        listed = set(info.value.message.rsplit("its fields: ", 1)[1].split(", "))
        assert listed == set(DEFINITIONS[kind]["properties"]) - {"rng_streams"}, kind


# Accepted by the parser (in some mode): the schema must accept each.
VALID: list[Any] = [
    m.Module(m.Dense(784, 256), m.Dense(256, 10)),
    m.Sequential(m.Dense(784, 256), m.Function("relu"), m.Dense(256, 10)),
    m.Module(m.Scan(m.Module(m.LayerNorm(8), m.MultiHeadAttention(8, num_heads=2), cls="Block"), 4, name="layers")),
    m.Module(m.Embed(100, 8), m.Einsum((8, 4), "btd,dk->btk", use_bias=False)),
    m.Module(m.LoRALinear(4, 4, lora_rank=2), m.Einsum((8, 4), "btd,dk->btk", bias_shape=(4,))),
    m.Module(m.Param("w", "orthogonal", (3, 3)), m.Conv(3, 8, (3, 3), param_dtype="bfloat16")),
    m.raw({"path": "enc.kernel", "initializer": "lecun_normal", "shape": [4, 4], "dtype": "float64"}),
    {"type": "Dense", "in_features": 2, "features": 2, "kernel_init": {"initializer": "normal", "args": None}},
    {"type": "Dense", "in_features": 2, "features": 2, "name": 7},  # the root's name is not checked
    {"type": "Module", "children": [{"type": "Param", "name": "p", "shape": [], "initializer": "zeros", "args": []}]},
    {"type": "Einsum", "kernel_shape": 3, "einsum_str": None, "bias_shape": None, "use_bias": None},
    {"type": "LoRALinear", "in_features": 2, "features": 2, "lora_rank": 1, "lora_param_dtype": 0},
    {"type": "Dense", "in_features": 2, "features": 2, "param_dtype": "double", "bias_init": None},
    {"params": [{"path": "w", "shape": [2], "initializer": "ones"}], "param_dtype": None},
    {"params": [{"path": "a.b", "shape": [1], "initializer": {"initializer": "constant", "args": {"value": 2.0}}}]},
]
# Refused by the parser: the schema refuses them too, at the JSON path given.
INVALID: list[tuple[Any, str]] = [
    ({"type": "Dens", "in_features": 2, "features": 2}, "model.type"),
    ({"type": "Module", "children": [{"type": "Dense", "in_features": 2, "featurs": 2}]}, "model.children[0]"),
    ({"type": "Dense", "in_features": 0, "features": 2}, "model.in_features"),
    ({"type": "Dense", "in_features": 2, "features": True}, "model.features"),
    ({"type": "Dense", "in_features": 2, "features": 2, "kernel_init": "lecun_normall"}, "model.kernel_init"),
    ({"type": "Dense", "in_features": 2, "features": 2, "param_dtype": "flaot32"}, "model.param_dtype"),
    ({"type": "Module", "children": [{"type": "Function"}]}, "model.children[0].type"),
    ({"type": "Sequential", "layers": [{"type": "Param", "name": "p", "shape": [1], "initializer": "zeros"}]}, ""),
    ({"type": "Sequential", "layers": [{**DENSE, "name": "x"}]}, "model.layers[0].name"),
    ({"type": "Module", "children": [{**DENSE, "name": "a.b"}]}, "model.children[0].name"),
    ({"type": "Module", "children": [{"type": "Module", "children": [], "rng_streams": ["x"]}]}, "rng_streams"),
    ({"type": "Module", "children": [{"type": "Param", "shape": [1], "initializer": "zeros"}]}, "children[0]"),
    ({"type": "Scan", "length": 5000, "module": DENSE}, "model.length"),
    ({"type": "Scan", "length": 2, "module": DENSE, "transform": "map"}, "model.transform"),
    ({"type": "Dropout", "rate": 1.5}, "model.rate"),
    ({"type": "MultiHeadAttention", "in_features": 4, "num_heads": 2, "class": "Attention"}, "model.class"),
    ({"params": [{"path": "a..b", "shape": [1], "initializer": "zeros"}]}, "model.params[0].path"),
    ({"params": [{"path": "a", "shape": [-1], "initializer": "zeros"}]}, "model.params[0].shape[0]"),
    ({"params": [{"path": "a", "shape": [1], "initializer": "normal", "key": [{"fold_in": -1}]}]}, "key[0]"),
    ({"params": [{"path": "a", "shape": [1], "initializer": "normal", "torch": ["w", "tt"]}]}, "torch[1]"),
    ({"params": "all of them"}, "model.params"),
    ({"params": [], "jti": True}, "model"),
    ({"rng_streams": [], "type": "Module", "children": []}, "model.rng_streams"),
    ([DENSE], "model"),
    ({**DENSE, "param_dtype": {"type": "Dense"}}, "model.param_dtype"),  # numpy's dtype(dict) raised ValueError
    ({"type": "Module", "children": [DENSE], "class": 3}, "model.class"),
    ({"type": ["Dense"], "in_features": 2, "features": 2}, "model.type"),  # (a list was a TypeError: a 500)
]


@pytest.mark.parametrize("description", VALID, ids=range(len(VALID)))
def test_what_the_parser_accepts_the_schema_accepts(description: Any) -> None:
    assert accepted(description)
    assert schema_accepts(json.loads(json.dumps(description)))


@pytest.mark.parametrize(("description", "where"), INVALID, ids=range(len(INVALID)))
def test_what_the_schema_refuses_the_parser_refuses(description: Any, where: str) -> None:
    assert not accepted(description)
    assert not schema_accepts(description)
    with pytest.raises(InvalidArgument) as info:
        schemas.check(description)
    assert where in info.value.message.split(": ", 1)[0], info.value.message


def test_messages_say_what_and_suggest() -> None:
    cases = {
        "'features' is required; unknown field(s) ['featurs'] for Dense; Did you mean features": INVALID[1][0],
        "model.kernel_init: 'kernel_init' is one of constant, ": INVALID[4][0],
        "got 'lecun_normall'; Did you mean": INVALID[4][0],
        "model.length: must be at most 4096, got 5000": INVALID[12][0],
        "'class' is one of MultiHeadAttention, MultiHeadDotProductAttention, SelfAttention": INVALID[15][0],
        "Did you mean lecun_normal": INVALID[4][0],
        "Did you mean float32": INVALID[5][0],
        "must be an int, got True": INVALID[3][0],
        "layers of a Sequential are named by position": INVALID[8][0],
        "rng_streams belongs at the root only": INVALID[10][0],
        'must be one step from the root key: {"fold_in": x}': INVALID[18][0],
    }
    for said, description in cases.items():
        with pytest.raises(InvalidArgument, match=re.escape(said)):
            schemas.check(description)
    deep: dict[str, Any] = DENSE
    for _ in range(5000):  # the parser refuses more than 32 levels; the check may not crash on it
        deep = {"type": "Module", "children": [deep]}
    with pytest.raises(InvalidArgument, match="nests too deeply"):
        schemas.check(deep)
    huge = {"type": "Dense", "in_features": "x" * 100_000, "features": 2}
    with pytest.raises(InvalidArgument) as info:
        schemas.check(huge)
    assert len(info.value.message) < 300  # the caller's value quoted short


def test_plans_are_the_raw_form_only() -> None:
    plan = FULL["raw"][1]
    assert schema_accepts(plan, schemas.PLAN)
    assert not schema_accepts(DENSE, schemas.PLAN)


# --- mutations of the full descriptions: whatever the parser accepts, the schema accepts ---

POOL: list[Any] = [None, True, False, 0, 1, -1, 2, 3, 4096, 4097, 2**32, 0.5, 1.5, 2.0, "", "x", "float32"]
POOL += ["normal", "Dense", "Param", "vmap", "a.b", [], [1], [2, 3], [0], [-1], ["params"], {}, DENSE]
POOL += [{"initializer": "zeros"}, {"fold_in": 1}, {"type": "Param", "name": "q", "shape": [1], "initializer": "ones"}]


def _places(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _places(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _places(value, (*path, i))


@st.composite
def mutants(draw: st.DrawFn) -> Any:
    _, description = FULL[draw(st.sampled_from(sorted(FULL)))]
    description = copy.deepcopy(description)
    places = list(_places(description))
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(places))
        if not path:
            continue
        parent: Any = description
        last = path[-1]
        try:  # an earlier mutation may have removed or replaced the way there
            for step in path[:-1]:
                parent = parent[step]
            if not isinstance(parent, (dict, list)):
                continue
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[last] = copy.deepcopy(draw(st.sampled_from(POOL)))
            elif action == "delete":
                del parent[last]
            elif isinstance(parent, dict):
                parent[draw(st.sampled_from(["zz", "name", "class", "rng_streams", "args", "use_bias"]))] = (
                    copy.deepcopy(draw(st.sampled_from(POOL)))
                )
        except (KeyError, IndexError, TypeError):
            continue
    return description


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutants())
def test_the_schema_never_refuses_what_the_parser_accepts(description: Any) -> None:
    if accepted(description):
        assert schema_accepts(description), description
    else:
        schema_accepts(description)  # the two validators agree either way
