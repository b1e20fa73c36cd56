"""KServe v2 on both transports: tritonclient, installed from PyPI in its own virtual
environment, fetches weights bit-exact with local JAX; errors are the protocol's."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import grpc
import httpx
import jax
import ml_dtypes
import numpy as np
import pytest

import jaxinit
from jaxinit_server.kserve import grpc_predict_v2_pb2 as pb
from jaxinit_server.kserve import grpc_predict_v2_pb2_grpc as pb_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRITONCLIENT = "tritonclient[grpc,http]==2.73.0"
VENV = ROOT / ".cache" / "tritonclient-2.73.0"

CASES = [
    {"id": "lecun", "model": "lecun_normal", "inputs": [["shape", "INT64", [784, 256]], ["seed", "INT64", [42]]]},
    {
        "id": "vs_bf16",
        "model": "variance_scaling",
        "inputs": [["shape", "INT64", [3, 3, 16, 32]], ["seed", "INT64", [-3]]],
        "parameters": {"dtype": "BF16", "scale": 2.0, "mode": "fan_out", "distribution": "uniform"},
    },
    {
        "id": "keydata",
        "model": "he_uniform",
        "inputs": [["shape", "INT64", [64, 8]], ["key_data", "UINT32", [1, 2, 3, 4]], ["fold_in", "UINT32", [7]]],
        "parameters": {"key_impl": "rbg", "in_axis": 0},
    },
    {
        "id": "axes",
        "model": "variance_scaling",
        "inputs": [["shape", "INT64", [5, 4, 3]], ["seed", "INT64", [1]]],
        "parameters": {"scale": 1.0, "mode": "fan_in", "distribution": "normal", "in_axis": "[0, 1]"},
    },
    {
        "id": "lecun_v1",
        "model": "lecun_normal",
        "version": "1",
        "inputs": [["shape", "INT64", [784, 256]], ["seed", "INT64", [42]]],
    },
    {
        "id": "version_2",
        "model": "lecun_normal",
        "version": "2",
        "inputs": [["shape", "INT64", [2]], ["seed", "INT64", [0]]],
    },
    {"id": "unknown_model", "model": "lecun_normel", "inputs": [["shape", "INT64", [2]], ["seed", "INT64", [0]]]},
    {
        "id": "bad_arg",
        "model": "normal",
        "inputs": [["shape", "INT64", [2]], ["seed", "INT64", [0]]],
        "parameters": {"sigma": 1.0},
    },
]


def _want(case_id: str) -> np.ndarray:
    init = jax.nn.initializers
    if case_id in ("lecun", "lecun_v1"):
        return np.asarray(init.lecun_normal()(jax.random.key(42), (784, 256)))
    if case_id == "vs_bf16":
        f = init.variance_scaling(2.0, "fan_out", "uniform")
        return np.asarray(f(jax.random.key(-3), (3, 3, 16, 32), ml_dtypes.bfloat16)).astype(np.float32)
    if case_id == "keydata":
        key = jax.random.fold_in(jax.random.wrap_key_data(np.array([1, 2, 3, 4], np.uint32), impl="rbg"), 7)
        return np.asarray(init.he_uniform(in_axis=0)(key, (64, 8)))
    f = init.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1))
    return np.asarray(f(jax.random.key(1), (5, 4, 3)))


@pytest.fixture(scope="session")
def triton_python() -> pathlib.Path:
    """A virtual environment with tritonclient (its pins clash with jaxinit's), made once."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", TRITONCLIENT],
            check=True,
            timeout=900,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        marker.touch()
    return python


@pytest.mark.release
def test_tritonclient_fetches_bit_exact_weights(
    server: Any, triton_python: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(CASES))
    http_hostport = server.http_url.removeprefix("http://")
    result = subprocess.run(
        [
            str(triton_python),
            str(ROOT / "tests" / "external" / "triton_fetch.py"),
            server.grpc_target,
            http_hostport,
            str(cases),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for transport in ("grpc", "http"):
        got = report[transport]
        assert got["live"] and got["ready"] and got["model_ready"]
        assert got["metadata_inputs"] == ["fold_in", "key_data", "seed", "shape"]
        assert got["version_ready"] and not got["version_2_ready"] and got["version_inputs"] == 4
        assert got["config"] == {
            "name": "lecun_normal",
            "max_batch_size": 0,
            "inputs": ["shape", "seed", "key_data", "fold_in"],
            "input_types": ["TYPE_INT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_UINT32"],
        }
        assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(got["extensions"])
        assert "does not support Triton's system shared memory" in got["shm_status"]
        # The lecun cases (two) were answered on this transport, and the gRPC ones before HTTP's.
        assert got["stats"]["name"] == "lecun_normal" and got["stats"]["success_count"] >= 2
        assert got["stats"]["inference_count"] == got["stats"]["success_count"]
        for case_id in ("lecun", "lecun_v1", "vs_bf16", "keydata", "axes"):
            want = _want(case_id)
            array = np.load(tmp_path / f"{transport}-{case_id}.npy")
            assert array.dtype == want.dtype and array.shape == want.shape, (transport, case_id)
            assert array.tobytes() == want.tobytes(), (transport, case_id)
        assert got["lecun"]["datatype"] == "FP32" and got["vs_bf16"]["datatype"] == "BF16"
        assert "unknown model" in got["unknown_model"]["error"]
        assert "no version '2'" in got["version_2"]["error"]
        assert "unexpected argument" in got["bad_arg"]["error"]
    assert "lecun_normal" in report["http"]["index"] and len(report["http"]["index"]) == len(jaxinit.CATALOG)


def test_v2_http_forms_and_errors(server: Any) -> None:
    base = f"{server.http_url}/v2"
    assert httpx.get(base).json()["name"] == "jaxinit"
    assert httpx.get(f"{base}/health/live").status_code == 200
    assert httpx.get(f"{base}/models/zeros/ready").status_code == 200
    assert httpx.get(f"{base}/models/nope/ready").status_code == 404
    meta = httpx.get(f"{base}/models/nope")
    assert meta.status_code == 404 and "unknown model" in meta.json()["error"]
    # Pure JSON in and out (no binary extension).
    body = {
        "inputs": [
            {"name": "shape", "datatype": "INT64", "shape": [2], "data": [2, 3]},
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [0]},
        ],
        "id": "r1",
    }
    answer = httpx.post(f"{base}/models/lecun_normal/infer", json=body).json()
    assert answer["id"] == "r1" and answer["outputs"][0]["shape"] == [2, 3]
    want = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(0), (2, 3)))
    assert np.asarray(answer["outputs"][0]["data"], np.float32).tobytes() == want.tobytes()
    for bad, status, message in [
        ({"inputs": []}, 400, "'shape' is required"),
        ({"inputs": [{"name": "shape", "datatype": "FP32", "shape": [1], "data": [2]}]}, 400, "must be INT64 or INT32"),
        ({"inputs": [{"name": "colour", "datatype": "INT64", "shape": [1], "data": [2]}]}, 400, "unknown input"),
        ({"inputs": body["inputs"], "parameters": {"dtype": "complex64"}}, 400, "no datatype for complex64"),
        ({"inputs": [{"name": "shape", "datatype": "INT64", "shape": [2], "data": [2**20, 2**20]}]}, 413, "limit"),
    ]:
        response = httpx.post(f"{base}/models/zeros/infer", json=bad)
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"} and message in response.json()["error"]
    broken = httpx.post(
        f"{base}/models/zeros/infer", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and "invalid inference request" in broken.json()["error"]


def test_v2_grpc_errors(server: Any) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(pb.ModelInferRequest(model_name="zeros"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request = pb.ModelInferRequest(model_name="ones")
        request.inputs.add(name="shape", datatype="INT64", shape=[2]).contents.int64_contents.extend([2, 2])
        reply = stub.ModelInfer(request)
        assert reply.outputs[0].datatype == "FP32" and reply.raw_output_contents[0] == np.ones(4, np.float32).tobytes()


def _v2_inputs(shape: list[int], seed: int) -> list[dict[str, Any]]:
    return [
        {"name": "shape", "datatype": "INT64", "shape": [len(shape)], "data": shape},
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [seed]},
    ]


def _binary_answer(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the output's bytes of a binary v2 answer, checked against its lengths."""
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content)
    size = int(response.headers["inference-header-content-length"])
    head = json.loads(response.content[:size])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(response.content) - size
    return head, response.content[size:]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # local JAX, stddev 1e39
def test_v2_non_finite_outputs_are_400_in_json_and_exact_in_binary(server: Any) -> None:
    """JSON has no NaN or infinity: such an output is refused, with the way to get it."""
    url = f"{server.http_url}/v2/models/{{}}/infer"
    init = jax.nn.initializers
    for model, parameters, factory in [
        ("normal", {"stddev": 1e39}, init.normal(1e39)),  # inf in float32
        (
            "variance_scaling",
            {"scale": -1.0, "mode": "fan_in", "distribution": "normal"},
            init.variance_scaling(-1.0, "fan_in", "normal"),
        ),  # sqrt of a negative: NaN
    ]:
        body = {"inputs": _v2_inputs([4, 3], 5), "parameters": parameters}
        response = httpx.post(url.format(model), json=body)
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error"}
        message = response.json()["error"]
        assert "non-finite" in message and "JSON cannot carry" in message and "binary_data" in message
        want = np.asarray(factory(jax.random.key(5), (4, 3), np.float32))
        assert not np.isfinite(want).all()
        for binary in (
            {"outputs": [{"name": "output", "parameters": {"binary_data": True}}]},
            {"parameters": {**parameters, "binary_data_output": True}},
        ):
            head, data = _binary_answer(httpx.post(url.format(model), json={**body, **binary}))
            assert head["outputs"][0]["shape"] == [4, 3] and data == want.tobytes()


MALFORMED: list[tuple[str, bytes]] = [
    ("input parameters a string", json.dumps({"inputs": [{**_v2_inputs([2], 0)[0], "parameters": "x"}]}).encode()),
    (
        "output parameters a list",
        json.dumps({"inputs": _v2_inputs([2], 0), "outputs": [{"name": "output", "parameters": [1]}]}).encode(),
    ),
    ("an output not an object", json.dumps({"inputs": _v2_inputs([2], 0), "outputs": [1]}).encode()),
    ("outputs a string", json.dumps({"inputs": _v2_inputs([2], 0), "outputs": "x"}).encode()),
    ("nested 1,100 deep", b"[" * 1100 + b"]" * 1100),
    ("inputs nested 1,100 deep", b'{"inputs": ' + b"[" * 1100 + b"]" * 1100 + b"}"),
    (
        "an argument nested 1,100 deep",
        json.dumps({"inputs": _v2_inputs([2], 0), "parameters": {"stddev": "[" * 1100 + "]" * 1100}}).encode(),
    ),
    ("unclosed, 200,000 deep", b"[" * 200_000),
    ("a huge input name", json.dumps({"inputs": [{**_v2_inputs([2], 0)[0], "name": "n" * 200_000}]}).encode()),
    ("a huge id", json.dumps({"inputs": _v2_inputs([2], 0), "id": list(range(100_000))}).encode()),
    ("request parameters a list", json.dumps({"inputs": _v2_inputs([2], 0), "parameters": [1]}).encode()),
    ("a NaN literal", b'{"inputs": [], "parameters": {"stddev": NaN}}'),
    (
        "binary_data not a bool",
        json.dumps(
            {"inputs": _v2_inputs([2], 0), "outputs": [{"name": "output", "parameters": {"binary_data": "yes"}}]}
        ).encode(),
    ),
    (
        "a negative binary_data_size",
        json.dumps({"inputs": [{**_v2_inputs([2], 0)[0], "parameters": {"binary_data_size": -8}}]}).encode(),
    ),
    ("dtype an object", json.dumps({"inputs": _v2_inputs([2], 0), "parameters": {"dtype": {"a": 1}}}).encode()),
]


@pytest.mark.parametrize("body", [body for _, body in MALFORMED], ids=[name for name, _ in MALFORMED])
def test_v2_malformed_documents_are_400(server: Any, body: bytes) -> None:
    response = httpx.post(
        f"{server.http_url}/v2/models/normal/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and len(response.json()["error"]) < 300, response.text
    assert httpx.get(f"{server.http_url}/v2/health/live").json() == {"live": True}


def test_v2_binary_answers_stream_bit_exact(server: Any) -> None:
    """Tensors of several chunks, as the binary extension sends them: header, then bytes."""
    url = f"{server.http_url}/v2/models/{{}}/infer"
    binary = {"binary_data_output": True}
    want = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(11), (1024, 768), np.float32))
    head, data = _binary_answer(
        httpx.post(
            url.format("lecun_normal"), json={"inputs": _v2_inputs([1024, 768], 11), "parameters": binary, "id": "big"}
        )
    )
    assert head["id"] == "big" and head["outputs"][0]["datatype"] == "FP32"
    assert head["outputs"][0]["shape"] == [1024, 768] and data == want.tobytes()
    # A range of it.
    head, data = _binary_answer(
        httpx.post(
            url.format("lecun_normal"),
            json={"inputs": _v2_inputs([1024, 768], 11), "parameters": {**binary, "offset": 1000, "count": 300_000}},
        )
    )
    assert head["outputs"][0]["shape"] == [300_000] and data == want.reshape(-1)[1000:301_000].tobytes()
    # bfloat16, asked on the output.
    f = jax.nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
    want = np.asarray(f(jax.random.key(3), (512, 1536), ml_dtypes.bfloat16))
    head, data = _binary_answer(
        httpx.post(
            url.format("variance_scaling"),
            json={
                "inputs": _v2_inputs([512, 1536], 3),
                "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
                "parameters": {"dtype": "BF16", "scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
            },
        )
    )
    assert head["outputs"][0]["datatype"] == "BF16" and data == want.tobytes()


def test_v2_grpc_model_infer_is_capped(server: Any) -> None:
    """A unary answer is made whole in memory: past MAX_UNARY_BYTES it is refused, pointing at
    the streaming routes; below it, the bytes are local JAX's."""
    from jaxinit_server.kserve.grpc_service import MAX_UNARY_BYTES

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="lecun_normal")
        request.inputs.add(name="shape", datatype="INT64", shape=[2]).contents.int64_contents.extend(
            [MAX_UNARY_BYTES // 4 // 1024 + 1, 1024]
        )
        request.inputs.add(name="seed", datatype="INT64", shape=[1]).contents.int64_contents.append(0)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Generate" in info.value.details() and "binary" in info.value.details()
        request = pb.ModelInferRequest(model_name="lecun_normal")
        request.inputs.add(name="shape", datatype="INT64", shape=[2]).contents.int64_contents.extend([1024, 768])
        request.inputs.add(name="seed", datatype="INT64", shape=[1]).contents.int64_contents.append(11)
        reply = stub.ModelInfer(request, timeout=60)
        want = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(11), (1024, 768), np.float32))
        assert list(reply.outputs[0].shape) == [1024, 768] and reply.raw_output_contents[0] == want.tobytes()


def _fields(descriptor: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        out[field.name] = [field.number, field.type, field.message_type.full_name if field.message_type else ""]
    for nested in descriptor.nested_types:
        if not nested.GetOptions().map_entry:
            out[f"<{nested.name}>"] = _fields(nested)
    return out


@pytest.mark.release
def test_proto_matches_tritonclient(triton_python: pathlib.Path) -> None:
    """Every message and method jaxinit serves is field for field what tritonclient sends."""
    from jaxinit_server.kserve import model_config_pb2

    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    config = model_config_pb2.DESCRIPTOR
    names = {
        "messages": sorted(pb.DESCRIPTOR.message_types_by_name),
        "methods": sorted(service.methods_by_name),
        "config_messages": sorted(config.message_types_by_name),
        "config_enums": sorted(config.enum_types_by_name),
    }
    result = subprocess.run(
        [str(triton_python), str(ROOT / "tests" / "external" / "triton_descriptors.py"), json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = json.loads(result.stdout)
    # The model configuration is the part of Triton's that jaxinit fills in: every field it
    # declares is Triton's (name, number, type), and it leaves the others out.
    for name, fields in theirs.pop("config_messages").items():
        assert _fields(config.message_types_by_name[name]).items() <= fields.items(), name
    for name, values in theirs.pop("config_enums").items():
        assert {v.name: v.number for v in config.enum_types_by_name[name].values} == values, name
    ours = {
        "messages": {name: _fields(pb.DESCRIPTOR.message_types_by_name[name]) for name in names["messages"]},
        "methods": {
            m: [service.methods_by_name[m].input_type.full_name, service.methods_by_name[m].output_type.full_name]
            for m in names["methods"]
        },
    }
    assert ours == theirs
