"""``--log-format json``: every line a server process writes, stdout and stderr, is one JSON
object (a log shipper parses it as it is), from every logger; a refused request's line says
what the caller asked for."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import httpx
import pytest

from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.testing import running_server


def _lines(output: list[str]) -> list[dict[str, Any]]:
    records = []
    for text in output:
        assert text.endswith("\n"), text
        record = json.loads(text)  # the whole line: no text prefix
        assert isinstance(record, dict), text
        assert {"time", "level", "logger", "message"} <= set(record), text
        records.append(record)
    return records


def test_every_line_is_json_under_traffic() -> None:
    # debug: the chattiest loggers (asyncio, grpc, JAX's compiles) have their say too.
    with running_server("--log-level", "debug", "--log-format", "json", "--no-warm-up") as server:
        url = server.http_url
        ok = httpx.get(f"{url}/v1/generate/normal", params={"shape": "3", "seed": 0}, timeout=60)
        assert ok.status_code == 200
        typo = httpx.post(
            f"{url}/v1/generate",
            json={"initializer": "lecun_normall", "shape": [3, 4], "dtype": "bfloat16"},
            headers={"X-Request-Id": "typo-1"},
            timeout=30,
        )
        assert typo.status_code == 404
        malformed = httpx.post(
            f"{url}/v1/generate",
            json={"initializer": "zeros", "shape": ["a"]},
            headers={"X-Request-Id": "malformed-1"},
            timeout=30,
        )
        assert malformed.status_code == 400 and malformed.headers["x-request-id"] == "malformed-1"
        assert httpx.get(f"{url}/no/such/path", timeout=30).status_code == 404
        v2 = httpx.post(
            f"{url}/v2/models/zeros/infer",
            json={"inputs": [{"name": "shape", "datatype": "INT64", "shape": [1], "data": [2]}]},
            timeout=30,
        )
        assert v2.status_code == 200, v2.text
        whole = httpx.get(f"{url}/v1/generate/orthogonal", params={"shape": "4,4", "seed": 0}, timeout=60)
        assert whole.status_code == 200  # a whole-tensor worker process: its lines too
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.InitializersStub(channel)
            list(stub.Generate(pb.GenerateRequest(initializer="ones", shape=[2])))
            with pytest.raises(grpc.RpcError) as refused:
                list(
                    stub.Generate(
                        pb.GenerateRequest(initializer="he_normall", shape=[5]), metadata=(("x-request-id", "g-typo"),)
                    )
                )
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert server.stop() == 0
        deadline = time.monotonic() + 30
        while not any("Finished server process" in line for line in server.output):
            assert time.monotonic() < deadline, "".join(server.output)
            time.sleep(0.05)

    records = _lines(server.output)
    loggers = {r["logger"] for r in records}
    assert "jaxinit_server.ready" in loggers and "jaxinit_server.requests" in loggers
    assert any(name.startswith("uvicorn") for name in loggers), loggers
    assert any(name.startswith("grpc") for name in loggers), loggers
    assert any(r.get("process") == "worker" for r in records), loggers
    ready = next(r for r in records if r["logger"] == "jaxinit_server.ready")
    assert ready["http"] == server.http_url and ready["grpc"] == server.grpc_target

    requests = {r["request_id"]: r for r in records if r["logger"] == "jaxinit_server.requests"}
    typo_line = requests["typo-1"]
    assert typo_line["initializer"] == "lecun_normall" and typo_line["shape"] == [3, 4]
    assert typo_line["dtype"] == "bfloat16" and typo_line["status"] == "NOT_FOUND"
    assert typo_line["error"] == "UnknownInitializer" and "lecun_normal" in typo_line["error_message"]
    malformed_line = requests["malformed-1"]
    assert malformed_line["initializer"] == "zeros" and malformed_line["status"] == "INVALID_ARGUMENT"
    assert malformed_line["method"] == "generate" and "shape" in malformed_line["error_message"]
    grpc_line = requests["g-typo"]
    assert grpc_line["transport"] == "grpc" and grpc_line["initializer"] == "he_normall"
    assert grpc_line["shape"] == [5] and grpc_line["status"] == "NOT_FOUND"
    v2_line = next(r for r in requests.values() if r["method"] == "v2_infer")
    assert v2_line["initializer"] == "zeros" and v2_line["status"] == "OK"


@pytest.mark.release  # (every other server process of the suite reads the text form's ready line)
def test_text_format_keeps_the_bare_ready_line() -> None:
    with running_server("--log-level", "warning", "--no-warm-up") as server:
        ready = [line for line in server.output if "jaxinit-server ready" in line]
        assert ready[0].startswith("jaxinit-server ready grpc=")
