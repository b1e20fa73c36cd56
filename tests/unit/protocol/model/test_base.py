"""jaxinit.protocol.model._base: typed access to one node of a description (Reader), the
shared helpers (is_list, at, names, relayed_dtype, parse_init) and the parsed tree's nodes.
Every refusal names the place in the description and the field. JAX-free."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from jaxinit.protocol.errors import InvalidArgument, UnknownDtype, UnknownInitializer
from jaxinit.protocol.model._base import (
    EMBED,
    Leaf,
    Node,
    Reader,
    at,
    is_list,
    names,
    parse_init,
    relayed_dtype,
)

WHERE = "model.children[0]"


def reader(**fields: Any) -> Reader:
    return Reader({"type": "Dense", **fields}, WHERE)


@pytest.mark.parametrize("node", ["Dense", ["Dense"], None, 3])
def test_a_node_that_is_not_an_object_is_refused_where_it_is(node: Any) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Reader(node, WHERE)
    assert str(caught.value) == f"{WHERE}: a module must be an object with a 'type', got {node!r}"


def test_integer_takes_ints_numpys_included_and_defaults() -> None:
    r = reader(a=3, b=np.int64(5), c=0)
    assert r.integer("a") == 3
    value = r.integer("b")
    assert value == 5 and type(value) is int  # plain int, whatever the caller sent
    assert r.integer("c", minimum=0) == 0
    assert r.integer("missing", 7) == 7


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "'n' must be an int >= 1, got True"),  # a bool is no int here
        (0, "'n' must be an int >= 1, got 0"),
        (2.0, "'n' must be an int >= 1, got 2.0"),
        ("2", "'n' must be an int >= 1, got '2'"),
        (None, "'n' is required (an int >= 1)"),
    ],
)
def test_integer_refuses_what_is_not_an_int_at_least_its_minimum(value: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        reader(n=value).integer("n")
    assert str(caught.value) == f"{WHERE}: {message}"


def test_integer_names_its_minimum() -> None:
    with pytest.raises(InvalidArgument, match=r"'n' must be an int >= 0, got -1$"):
        reader(n=-1).integer("n", minimum=0)


def test_integers_takes_an_int_or_a_non_empty_list_as_a_tuple() -> None:
    r = reader(one=4, many=[2, 3], tup=(5, np.int32(6)))
    assert r.integers("one") == (4,)
    assert r.integers("many") == (2, 3)
    assert r.integers("tup") == (5, 6)
    assert r.integers("missing", [1, 1]) == (1, 1)


@pytest.mark.parametrize("value", [[], "ab", [1, 0], [1, 2.0], {"a": 1}, 0, [True]])
def test_integers_refuses_anything_else(value: Any) -> None:
    with pytest.raises(InvalidArgument) as caught:
        reader(k=value).integers("k")
    assert str(caught.value) == f"{WHERE}: 'k' must be a positive int or a non-empty list of them, got {value!r}"


def test_integers_says_when_it_is_missing() -> None:
    with pytest.raises(InvalidArgument) as caught:
        reader().integers("kernel_size")
    assert str(caught.value) == f"{WHERE}: 'kernel_size' is required (an int or a list of ints)"


def test_shape_is_a_list_of_non_negative_ints_named_by_its_field() -> None:
    assert reader(shape=[2, 0, 3]).shape("shape") == (2, 0, 3)
    assert reader(shape=[]).shape("shape") == ()
    with pytest.raises(InvalidArgument) as caught:
        reader(shape=[2, -1]).shape("shape")
    assert str(caught.value) == f"{WHERE}: 'shape' must be a sequence of non-negative ints, got [2, -1]"
    with pytest.raises(InvalidArgument, match=r"'shape' must be a sequence of non-negative ints, got None$"):
        reader().shape("shape")


def test_fraction_is_a_number_in_zero_to_one() -> None:
    r = reader(zero=0, one=1, half=0.5)
    assert (r.fraction("zero", 0.5), r.fraction("one", 0.5), r.fraction("half", 0.1)) == (0.0, 1.0, 0.5)
    assert type(r.fraction("one", 0.5)) is float
    assert r.fraction("missing", 0.25) == 0.25


@pytest.mark.parametrize("value", [True, 1.5, -0.1, "0.5", float("nan"), float("inf"), None])
def test_fraction_refuses_anything_else(value: Any) -> None:
    with pytest.raises(InvalidArgument) as caught:
        reader(rate=value).fraction("rate", 0.5)
    assert str(caught.value) == f"{WHERE}: 'rate' must be a number in [0, 1], got {value!r}"


def test_flag_is_true_or_false_only() -> None:
    assert reader(use_bias=False).flag("use_bias", True) is False
    assert reader().flag("use_bias", True) is True
    for value in (1, 0, "true", None):
        with pytest.raises(InvalidArgument) as caught:
            reader(use_bias=value).flag("use_bias", True)
        assert str(caught.value) == f"{WHERE}: 'use_bias' must be true or false, got {value!r}"


def test_dtype_is_inherited_unless_param_dtype_names_one() -> None:
    assert reader().dtype("bfloat16") == "bfloat16"
    assert reader(param_dtype=None).dtype("bfloat16") == "bfloat16"
    assert reader(param_dtype="float16").dtype("float32") == "float16"
    assert reader(param_dtype=np.float64).dtype("float32") == "float64"
    with pytest.raises(UnknownDtype) as caught:
        reader(param_dtype="bf16").dtype("float32")
    assert str(caught.value).startswith(f"{WHERE}: param_dtype: unknown dtype 'bf16'; Did you mean bfloat16?")


def test_init_gives_a_copy_of_the_default_or_the_override() -> None:
    r = reader(kernel_init={"initializer": "normal", "args": {"stddev": 0.5}})
    default = r.init("bias_init", EMBED)
    assert default == EMBED and default[1] is not EMBED[1]  # the module-level default stays untouched
    default[1]["scale"] = 9.0
    assert EMBED[1]["scale"] == 1.0
    assert r.init("kernel_init", EMBED) == ("normal", {"stddev": 0.5})
    with pytest.raises(UnknownInitializer) as caught:
        reader(kernel_init="nope").init("kernel_init", EMBED)
    assert str(caught.value).startswith(f"{WHERE}: 'kernel_init': unknown initializer 'nope'; available: constant,")


def test_modules_is_a_list_of_anything() -> None:
    assert reader(children=({"type": "Dense"},)).modules("children") == [{"type": "Dense"}]
    for value in ("Dense", {"type": "Dense"}, None, 3):
        with pytest.raises(InvalidArgument) as caught:
            reader(children=value).modules("children")
        assert str(caught.value) == f"{WHERE}: 'children' must be a list of modules, got {value!r}"


def test_done_refuses_the_fields_nothing_read_and_lists_those_it_did() -> None:
    r = reader(features=2, featurs=3)
    r.integer("features")
    with pytest.raises(InvalidArgument) as caught:
        r.done()
    assert str(caught.value) == (
        f"{WHERE}: unknown field(s) ['featurs'] for Dense; Did you mean features? its fields: features, name, type"
    )
    # several unknown ones: sorted (as text: keys need not be strings), no guess
    r = Reader({"type": "Dense", "y": 1, 2: 3, "x": 1}, WHERE)
    with pytest.raises(InvalidArgument) as caught:
        r.done()
    assert str(caught.value) == f"{WHERE}: unknown field(s) [2, 'x', 'y'] for Dense; its fields: name, type"


def test_done_accepts_a_field_read_even_when_absent_or_defaulted() -> None:
    r = reader(name="head", use_bias=True)
    r.flag("use_bias", True)
    r.get("kernel_init")
    r.done()
    assert r.used == {"type", "name", "use_bias", "kernel_init"}


def test_is_list_is_a_sequence_that_is_no_string_and_no_mapping() -> None:
    assert is_list([]) and is_list((1,)) and is_list(range(2))
    assert not any(is_list(v) for v in ("ab", b"ab", {"a": 1}, 3, None, {1, 2}))


def test_at_leaves_the_middle_of_a_long_place_out() -> None:
    assert at("x" * 120) == "x" * 120
    long = "a" * 50 + "b" * 20 + "c" * 60
    assert at(long) == "a" * 50 + "..." + "c" * 60


def test_names_sorts_as_text() -> None:
    assert names({"b", "a", 10, 2}) == [10, 2, "a", "b"]
    assert names({}) == []


def test_relayed_dtype_quotes_a_long_value_short() -> None:
    assert relayed_dtype("bfloat16") == "bfloat16"
    with pytest.raises(UnknownDtype) as caught:
        relayed_dtype("x" * 1000, "m: ")
    message = str(caught.value)
    assert message.startswith("m: unknown dtype 'xxx") and "... (1000 characters)" in message
    assert "x" * 200 not in message


@pytest.mark.parametrize(
    ("value", "init"),
    [
        ("normal", ("normal", {})),
        ({"initializer": "normal"}, ("normal", {})),
        ({"initializer": "normal", "args": None}, ("normal", {})),
        ({"initializer": "normal", "args": {"stddev": 1}}, ("normal", {"stddev": 1})),  # an int stays one
        # only what was given (the defaults are the registry's), normalised: a tuple of axes is a list
        (
            {"initializer": "lecun_normal", "args": {"in_axis": (-2,), "out_axis": -1}},
            ("lecun_normal", {"in_axis": [-2], "out_axis": -1}),
        ),
    ],
)
def test_parse_init_reads_a_name_or_an_object(value: Any, init: tuple[str, dict[str, Any]]) -> None:
    assert parse_init(value, "m.k") == init


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ({"initializer": "normal", "args": [1]}, InvalidArgument, "m.k: 'args' must be an object, got [1]"),
        (
            {"initializer": "normal", "extra": 1},
            InvalidArgument,
            'm.k: an initializer is a registry name or {"initializer": name, "args": {...}}, got '
            "{'initializer': 'normal', 'extra': 1}",
        ),
        (
            {"args": {}},
            InvalidArgument,
            'm.k: an initializer is a registry name or {"initializer": name, "args": {...}}, got {\'args\': {}}',
        ),
        (
            3,
            InvalidArgument,
            'm.k: an initializer is a registry name or {"initializer": name, "args": {...}}, got 3',
        ),
        (
            {"initializer": "normal", "args": {"stdev": 1}},
            InvalidArgument,
            "m.k: normal() got unexpected argument(s) ['stdev']; it takes stddev, dtype",
        ),
        (
            {"initializer": "normal", "args": {"stddev": "x"}},
            InvalidArgument,
            "m.k: normal() argument 'stddev' must be a number, got 'x'",
        ),
    ],
)
def test_parse_init_refuses_by_place(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        parse_init(value, "m.k")
    assert type(caught.value) is error and str(caught.value) == message


def test_parse_init_keeps_an_unknown_names_class_and_quotes_it_short() -> None:
    with pytest.raises(UnknownInitializer) as caught:
        parse_init("nromal", "m.k")
    assert str(caught.value).startswith("m.k: unknown initializer 'nromal'; Did you mean normal, he_normal? available:")
    with pytest.raises(UnknownInitializer) as caught:
        parse_init("x" * 5000, "m.k")
    assert "... (5000 characters)" in str(caught.value) and len(str(caught.value)) < 600


def test_node_leaves_puts_each_leaf_under_its_role() -> None:
    kernel = Leaf("kernel", ("lecun_normal", {}), (2, 3), "float32")
    bias = Leaf("bias", ("zeros", {}), (3,), "float32")
    node = Node("Dense")
    assert node.leaves([kernel, bias]) is node
    assert node.items == [("kernel", kernel), ("bias", bias)]
    assert (node.cls, node.length, node.transform) == ("", 0, "")
    assert Node("Module").items is not Node("Module").items  # each node its own list
