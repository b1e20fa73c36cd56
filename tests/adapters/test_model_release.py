"""A model's admission is given back however its streamed answer ends, including a caller
gone after the status line and before the body's generator ever ran (the generator then
never reaches its ``finally``): every model media type, over the ASGI app in process."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from jaxinit.protocol import wire
from jaxinit_server.core import Limits, Service
from jaxinit_server.rest.app import create_app

MODEL = {"type": "Dense", "in_features": 8, "features": 4}


@pytest.fixture(scope="module")
def service() -> Service:
    return Service(Limits())


@pytest.mark.parametrize("media", [wire.TENSORS, wire.SAFETENSORS, wire.NPZ])
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_caller_gone_before_the_body_gives_the_models_capacity_back(
    service: Service, media: str, spec_version: str
) -> None:
    app = create_app(service)
    body = json.dumps({"model": MODEL, "key": {"seed": 1}}).encode()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/models/init",
        "raw_path": b"/v1/models/init",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"accept", media.encode()), (b"host", b"x")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # (2.3: the caller leaves once the status line is out)
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.start" and message["status"] == 200:
            raise OSError("the caller is gone")  # after the status line, before any body

    async def run() -> None:
        await asyncio.wait_for(_call(app, scope, receive, send), 60)

    asyncio.run(run())
    assert sent and sent[0]["status"] == 200, sent[:1]
    assert service.admission.streams == 0 and service.admission.bytes == 0


async def _call(app: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    with contextlib.suppress(Exception):  # the server's own handling of a caller gone (ClientDisconnect, OSError)
        await app(scope, receive, send)
