"""Transport parity: one request of each producer kind gives local JAX's bytes over every
surface, from the session's in-process server (real loopback sockets, no server process).

Producer kinds: chunked (several chunks), fill, whole (the worker process), empty,
stacked keys, and a range of a chunked tensor. Surfaces: gRPC Generate and GenerateMany,
the client over REST, REST POST as .npy, the GET form, KServe v2 over REST (binary) and
over gRPC. Exactness per initializer x dtype x mode is the core's (tests/core); the
shared-memory region surface is tested with shared memory.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import jax
import numpy as np
import pytest

import jaxinit
from jaxinit_server.kserve import grpc_predict_v2_pb2 as v2
from jaxinit_server.kserve import grpc_predict_v2_pb2_grpc as v2_grpc


@dataclass(frozen=True)
class Kind:
    """One request of a producer kind: what each surface is asked, and local JAX's bytes."""

    name: str
    initializer: str
    shape: tuple[int, ...]
    seed: int
    args: dict[str, Any] = field(default_factory=dict)
    stack: int = 0  # a stack:N key step: N slices, each its own key
    offset: int | None = None
    count: int | None = None

    def key(self) -> Any:
        return jaxinit.stacked(self.seed, self.stack) if self.stack else self.seed

    def want(self) -> bytes:
        init = getattr(jax.nn.initializers, self.initializer)(**self.args)
        if self.stack:
            keys = jax.random.split(jax.random.key(self.seed), self.stack)
            array = np.asarray(jax.vmap(lambda k: init(k, self.shape[1:]))(keys))
        else:
            array = np.asarray(init(jax.random.key(self.seed), self.shape))
        flat = array.reshape(-1)
        if self.offset is not None and self.count is not None:
            flat = flat[self.offset : self.offset + self.count]
        return flat.tobytes()

    def range(self) -> dict[str, int]:
        return {} if self.offset is None or self.count is None else {"offset": self.offset, "count": self.count}

    def query(self) -> dict[str, Any]:
        """The GET form's query (and KServe's parameters, but for the shape and seed)."""
        out: dict[str, Any] = {**self.args, **self.range()}
        if self.stack:
            out["key_derive"] = f"stack:{self.stack}"
        return out


KINDS = [
    Kind("chunked", "normal", (1200, 1000), 5, {"stddev": 0.5}),
    Kind("fill", "constant", (300, 7), 0, {"value": 0.25}),
    Kind("whole", "orthogonal", (64, 48), 3),
    Kind("empty", "normal", (0, 3), 1),
    Kind("stacked", "he_normal", (3, 5, 4), 2, stack=3),
    Kind("range", "normal", (1200, 1000), 7, offset=1000, count=300_000),
]
SURFACES = ["grpc-generate", "grpc-generate-many", "rest-client", "rest-npy", "rest-get", "kserve-rest", "kserve-grpc"]


def _client(server: Any, surface: str, kind: Kind) -> bytes:
    url = server.grpc_url if surface.startswith("grpc") else server.http_url
    with jaxinit.Client(url) as client:
        if surface == "grpc-generate-many":
            request = client.request(kind.initializer, kind.key(), kind.shape, args=kind.args, **kind.range())
            (tensor,) = client.generate_many([request])
            assert isinstance(tensor, jaxinit.Tensor), tensor
        else:
            tensor = client.generate(kind.initializer, kind.key(), kind.shape, args=kind.args, **kind.range())
    return bytes(tensor.array.tobytes())


def _rest_npy(server: Any, kind: Kind) -> bytes:
    key: dict[str, Any] = {"seed": kind.seed}
    body = {"initializer": kind.initializer, "shape": list(kind.shape), "key": key, "args": kind.args, **kind.range()}
    if kind.stack:
        key["derive"] = [{"stack": kind.stack}]
    answer = httpx.post(
        f"{server.http_url}/v1/generate", json=body, headers={"Accept": "application/x-npy"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return bytes(np.load(io.BytesIO(answer.content)).tobytes())


def _rest_get(server: Any, kind: Kind) -> bytes:
    params = {"shape": ",".join(map(str, kind.shape)), "seed": kind.seed, **kind.query()}
    answer = httpx.get(
        f"{server.http_url}/v1/generate/{kind.initializer}",
        params=params,
        headers={"Accept": "application/octet-stream"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def _kserve_rest(server: Any, kind: Kind) -> bytes:
    inputs = [
        {"name": "shape", "datatype": "INT64", "shape": [len(kind.shape)], "data": list(kind.shape)},
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [kind.seed]},
    ]
    body = {"inputs": inputs, "parameters": {"binary_data_output": True, **kind.query()}}
    answer = httpx.post(f"{server.http_url}/v2/models/{kind.initializer}/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    size = int(answer.headers["inference-header-content-length"])
    head = json.loads(answer.content[:size])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(answer.content) - size
    return answer.content[size:]


def _kserve_grpc(server: Any, kind: Kind) -> bytes:
    request = v2.ModelInferRequest(model_name=kind.initializer)
    request.inputs.add(name="shape", datatype="INT64", shape=[len(kind.shape)]).contents.int64_contents.extend(
        kind.shape
    )
    request.inputs.add(name="seed", datatype="INT64", shape=[1]).contents.int64_contents.extend([kind.seed])
    for name, value in kind.query().items():
        if isinstance(value, str):
            request.parameters[name].string_param = value
        elif isinstance(value, int):
            request.parameters[name].int64_param = value
        else:
            request.parameters[name].double_param = value
    options = [("grpc.max_receive_message_length", -1)]  # one message holds the tensor
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        reply = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    return b"".join(reply.raw_output_contents)


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_each_surface_sends_the_cores_bytes(server: Any, kind: Kind, surface: str) -> None:
    if surface in ("grpc-generate", "grpc-generate-many", "rest-client"):
        got = _client(server, surface, kind)
    elif surface == "rest-npy":
        got = _rest_npy(server, kind)
    elif surface == "rest-get":
        got = _rest_get(server, kind)
    elif surface == "kserve-rest":
        got = _kserve_rest(server, kind)
    else:
        got = _kserve_grpc(server, kind)
    assert got == kind.want(), f"{kind.name} over {surface}: bytes differ from local JAX"
