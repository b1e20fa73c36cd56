"""KServe v2 requests read and checked without a server: every malformed document is a
short InvalidArgument (a 400), never an exception that becomes a 500."""

from __future__ import annotations

import json
import math
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from jaxinit.protocol.errors import InvalidArgument, JaxinitError, UnknownInitializer, mapping_for
from jaxinit_server.kserve.mapping import (
    MAX_JSON_DEPTH,
    MAX_QUOTE_CHARS,
    input_from_bytes,
    input_from_values,
    json_depth,
    params_from_v2,
    quote,
)
from jaxinit_server.kserve.rest import HEADER_LENGTH, json_answer, read_request

SHAPE = {"name": "shape", "datatype": "INT64", "shape": [2], "data": [2, 3]}
SEED = {"name": "seed", "datatype": "INT64", "shape": [1], "data": [0]}
BIG = "x" * 100_000


def _doc(**fields: Any) -> dict[str, Any]:
    return {"inputs": [SHAPE, SEED], **fields}


def _read(document: Any) -> Any:
    return read_request(json.dumps(document).encode())


def _refused(document: Any, *, raw: bytes | None = None, header_length: str | None = None) -> str:
    """The message of the 400 that ``document`` gets, checked to be short."""
    with pytest.raises(JaxinitError) as info:
        read_request(raw if raw is not None else json.dumps(document).encode(), header_length)
    assert type(info.value) is InvalidArgument and mapping_for(info.value).http_status == 400
    assert len(info.value.message) < 300, info.value.message
    return info.value.message


# quote, json_depth


@pytest.mark.parametrize(
    "value",
    [
        BIG,
        [BIG] * 10,
        list(range(100_000)),
        {str(i): i for i in range(10_000)},
        10**4000,
        10**5000,
        [[[[[[[[1]]]]]]]],
        b"y" * 10_000,
        object(),
    ],
    ids=lambda v: type(v).__name__,
)
def test_quote_is_short_whatever_the_value(value: Any) -> None:
    assert len(quote(value)) <= MAX_QUOTE_CHARS + len("... (100000 characters)")  # cut, then its size


def test_quote_of_small_values_is_their_repr() -> None:
    assert quote("fan_in") == "'fan_in'" and quote([1, 2]) == "[1, 2]" and quote(None) == "None"


@pytest.mark.parametrize(
    "text, depth",
    [
        ("1", 0),
        ('"[[["', 0),
        ("[]", 1),
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('{"a": "]]]}}}[[[", "b": [[]]}', 3),
        (r'["\"[[[", [2]]', 2),
        (r'["\\", [[3]]]', 3),
        (r'["\\\"[", [[3]]]', 3),
        ("[" * 1100 + "]" * 1100, 1100),
        ("[[]]" * 10, 2),
        ('["\ud800", [1]]', 2),
    ],
)
def test_json_depth(text: str, depth: int) -> None:
    assert json_depth(text) == depth
    assert json_depth(text.encode("utf-8", "surrogatepass")) == depth


def test_json_depth_across_its_scratch_blocks() -> None:
    deep = b"[" * (3 * 2**20) + b"]" * (3 * 2**20)
    assert json_depth(deep) == 3 * 2**20
    flat = b"[" + b"[]," * (2**21) + b"[[[]]]]"
    assert json_depth(flat) == 4


# read_request: the shapes of a v2 document


def test_a_valid_document() -> None:
    request = _read(_doc(id="r1", parameters={"dtype": "BF16"}, outputs=[{"name": "output"}]))
    assert request.id == "r1" and request.parameters == {"dtype": "BF16"} and not request.binary_output
    assert [i.name for i in request.inputs] == ["shape", "seed"]
    assert list(request.inputs[0].values) == [2, 3]


@pytest.mark.parametrize(
    "fields, binary",
    [
        ({}, False),
        ({"parameters": {"binary_data_output": True}}, True),
        ({"outputs": [{"name": "output", "parameters": {"binary_data": True}}]}, True),
        ({"parameters": {"binary_data_output": True}, "outputs": [{"name": "output"}]}, True),
        # The output's own parameter overrides the request's.
        (
            {
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "output", "parameters": {"binary_data": False}}],
            },
            False,
        ),
    ],
)
def test_binary_output_choice(fields: dict[str, Any], binary: bool) -> None:
    assert _read(_doc(**fields)).binary_output is binary


def test_binary_inputs_after_the_header() -> None:
    head = json.dumps(
        {"inputs": [{"name": "shape", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}}, SEED]}
    ).encode()
    request = read_request(head + np.array([4, 5], "<i8").tobytes(), str(len(head)))
    assert list(request.inputs[0].values) == [4, 5]


@pytest.mark.parametrize(
    "document, message",
    [
        ([1, 2], "is a JSON object"),
        ("x", "is a JSON object"),
        ({}, "needs an 'inputs' list"),
        ({"inputs": "x"}, "needs an 'inputs' list"),
        ({"inputs": [1]}, "inputs[0] must be an object"),
        ({"inputs": [{"datatype": "INT64"}]}, "inputs[0] must be an object with a string 'name'"),
        ({"inputs": [{**SHAPE, "name": 7}]}, "string 'name'"),
        ({"inputs": [{**SHAPE, "datatype": None}]}, "needs a 'datatype'"),
        ({"inputs": [{**SHAPE, "datatype": "INT65"}]}, "unknown datatype"),
        ({"inputs": [{**SHAPE, "shape": "2"}]}, "'shape' of non-negative integers"),
        ({"inputs": [{**SHAPE, "shape": [-1]}]}, "'shape' of non-negative integers"),
        ({"inputs": [{**SHAPE, "shape": [True]}]}, "'shape' of non-negative integers"),
        ({"inputs": [{**SHAPE, "shape": [1.5]}]}, "'shape' of non-negative integers"),
        ({"inputs": [{**SHAPE, "parameters": "x"}]}, "'parameters' must be an object"),
        ({"inputs": [{**SHAPE, "parameters": [1]}]}, "'parameters' must be an object"),
        ({"inputs": [{**SHAPE, "parameters": {"binary_data_size": -8}}]}, "binary_data_size must be a byte count"),
        ({"inputs": [{**SHAPE, "parameters": {"binary_data_size": True}}]}, "binary_data_size must be a byte count"),
        ({"inputs": [{**SHAPE, "parameters": {"binary_data_size": 16}}]}, "past the end of the body"),
        ({"inputs": [{**SHAPE, "data": "23"}]}, "'data' must be a list"),
        ({"inputs": [{**SHAPE, "data": {"a": 1}}]}, "'data' must be a list"),
        ({"inputs": [{**SHAPE, "data": [2, "3"]}]}, "must hold integers"),
        ({"inputs": [{**SHAPE, "data": [2, 3.0]}]}, "must hold integers"),
        ({"inputs": [{**SHAPE, "data": [[2, 3], [4]]}]}, "must hold integers"),
        ({"inputs": [{**SHAPE, "data": [[2, 3, 4]]}]}, "values for shape"),
        ({"inputs": [SHAPE], "parameters": "x"}, "'parameters' must be an object"),
        ({"inputs": [SHAPE], "parameters": [1]}, "'parameters' must be an object"),
        ({"inputs": [SHAPE], "parameters": {"binary_data_output": "yes"}}, "binary_data_output must be true or false"),
        ({"inputs": [SHAPE], "outputs": "x"}, "'outputs' must be a list"),
        ({"inputs": [SHAPE], "outputs": {"name": "output"}}, "'outputs' must be a list"),
        ({"inputs": [SHAPE], "outputs": [1]}, "outputs[0] must be an object"),
        ({"inputs": [SHAPE], "outputs": ["output"]}, "outputs[0] must be an object"),
        ({"inputs": [SHAPE], "outputs": [{"parameters": {}}]}, "string 'name'"),
        ({"inputs": [SHAPE], "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
        ({"inputs": [SHAPE], "outputs": [{"name": "output", "parameters": [1]}]}, "'parameters' must be an object"),
        ({"inputs": [SHAPE], "outputs": [{"name": "output", "parameters": "x"}]}, "'parameters' must be an object"),
        (
            {"inputs": [SHAPE], "outputs": [{"name": "output", "parameters": {"binary_data": 1}}]},
            "must be true or false",
        ),
        ({"inputs": [SHAPE], "id": 7}, "'id' must be a string"),
        ({"inputs": [SHAPE], "id": {"a": [1]}}, "'id' must be a string"),
    ],
)
def test_malformed_documents_are_400(document: Any, message: str) -> None:
    assert message in _refused(document)


@pytest.mark.parametrize(
    "document",
    [
        {"inputs": [{**SHAPE, "name": BIG}]},
        {"inputs": [{**SHAPE, "datatype": BIG}]},
        {"inputs": [{**SHAPE, "shape": [BIG] * 10}]},  # 1 MB: a message of 300 characters quotes little of it
        {"inputs": [SHAPE], "outputs": [{"name": BIG}]},
        {"inputs": [SHAPE], "outputs": [BIG]},
        {"inputs": [SHAPE], "parameters": [BIG] * 10},
        {"inputs": BIG},
        {"inputs": [SHAPE], "id": list(range(100_000))},
    ],
)
def test_messages_quote_little_of_a_huge_value(document: Any) -> None:
    try:
        request = _read(document)
    except InvalidArgument as exc:
        message = exc.message
    else:
        with pytest.raises(InvalidArgument) as info:
            params_from_v2("normal", request.inputs, request.parameters)
        message = info.value.message
    assert len(message) < 300, message


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "invalid inference request"),
        (b'{"inputs": [1, 2,]}', "invalid inference request"),
        (b"\xff\xfe\x00", "invalid inference request"),
        (b'{"inputs": [], "parameters": {"scale": NaN}}', "NaN is not JSON"),
        (b'{"inputs": [], "parameters": {"scale": -Infinity}}', "-Infinity is not JSON"),
        (b'{"inputs": [' + b"1" * 5000 + b"]}", "invalid inference request"),
        (b"[" * 1100 + b"]" * 1100, "nested deeper than"),
        (b'{"inputs": ' + b"[" * 65 + b"]" * 65 + b"}", "nested deeper than"),
        (b"[" * 100_000, "nested deeper than"),
    ],
)
def test_unparseable_documents_are_400(raw: bytes, message: str) -> None:
    assert message in _refused(None, raw=raw)


def test_nesting_up_to_the_limit_parses() -> None:
    deep = "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2)
    request = read_request(('{"inputs": [], "parameters": {"x": ' + deep + "}}").encode())
    assert "x" in request.parameters


@pytest.mark.parametrize(
    "header, message",
    [
        ("abc", "must be a byte count"),
        ("-1", "must be a byte count"),
        ("1" * 5000, "must be a byte count"),
        ("\u00b2", "must be a byte count"),
        ("999", "past the end"),
    ],
)
def test_bad_header_lengths_are_400(header: str, message: str) -> None:
    assert message in _refused(None, raw=b"{}", header_length=header)
    assert HEADER_LENGTH in _refused(None, raw=b"{}", header_length=header)


# params_from_v2 and the inputs, for both transports


def _inputs() -> list[Any]:
    return _read(_doc()).inputs


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"dtype": {"a": 1}}, "parameter dtype must be a string"),
        ({"dtype": [BIG]}, "parameter dtype must be a string"),
        ({"offset": "x"}, "parameter offset must be an integer"),
        ({"count": 1.5}, "parameter count must be an integer"),
        ({"offset": True}, "parameter offset must be an integer"),
        ({"key_impl": [1] * 100_000}, "parameter key_impl must be a string"),
        ({"threefry_partitionable": "yes"}, "must be a bool"),
        ({"stddev": "[" * 1100 + "]" * 1100}, "nests deeper than"),
        ({"stddev": "[" * 65}, "nests deeper than"),
    ],
)
def test_parameters_of_the_wrong_kind_are_400(parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        params_from_v2("normal", _inputs(), parameters)
    assert message in info.value.message and len(info.value.message) < 300


def test_unknown_model_is_404_and_quoted() -> None:
    with pytest.raises(UnknownInitializer) as info:
        params_from_v2("m" * 100_000, _inputs(), {})
    assert mapping_for(info.value).http_status == 404 and len(info.value.message) < 200


def test_a_parameter_holding_a_json_literal_is_read() -> None:
    params = params_from_v2(
        "variance_scaling", _inputs(), {"scale": 1.0, "mode": "fan_in", "distribution": "normal", "in_axis": "[0]"}
    )
    assert params.args["in_axis"] == [0] and params.args["mode"] == "fan_in"


def test_inputs_from_values_and_bytes() -> None:
    assert list(input_from_values("shape", "INT64", [2, 2], [[1, 2], [3, 4]]).values) == [1, 2, 3, 4]
    with pytest.raises(InvalidArgument, match="must hold integers"):
        input_from_values("shape", "INT64", [1], [True])
    with pytest.raises(InvalidArgument, match="unknown datatype"):
        input_from_values("shape", BIG, [1], [1])
    with pytest.raises(InvalidArgument) as info:
        input_from_bytes(BIG, "INT64", [1], b"1234")
    assert "expected 8" in info.value.message and len(info.value.message) < 300


# The JSON answer


def _head(datatype: str, shape: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    output: dict[str, Any] = {"name": "output", "datatype": datatype, "shape": shape}
    return {"model_name": "m", "model_version": "1", "outputs": [output]}, output


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
def test_json_answers_refuse_non_finite_values(value: float, dtype: Any) -> None:
    array = np.array([1.0, value, 2.0], dtype)
    head, output = _head("FP32", [3])
    with pytest.raises(InvalidArgument) as info:
        json_answer(head, output, array)
    assert mapping_for(info.value).http_status == 400
    message = info.value.message
    assert "non-finite" in message and "JSON cannot carry" in message
    assert "binary_data" in message and "binary_data_output" in message


def test_json_answers_are_exact() -> None:
    values = np.array([[0.1, -2.5e-30], [3.4e38, 1.0]], np.float32)
    head, output = _head("FP32", [2, 2])
    answer = json.loads(json_answer(head, output, values))
    assert np.asarray(answer["outputs"][0]["data"], np.float32).tobytes() == values.reshape(-1).tobytes()
    bf16 = np.array([1.5, -0.0078125, 3.0e38], ml_dtypes.bfloat16)
    head, output = _head("BF16", [3])
    data = json.loads(json_answer(head, output, bf16))["outputs"][0]["data"]
    assert np.asarray(data, np.float32).astype(ml_dtypes.bfloat16).tobytes() == bf16.tobytes()
    ints = np.array([-(2**63), 2**63 - 1], np.int64)
    head, output = _head("INT64", [2])
    assert json.loads(json_answer(head, output, ints))["outputs"][0]["data"] == [-(2**63), 2**63 - 1]
