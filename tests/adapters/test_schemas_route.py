"""GET /v1/schemas/{name}: the JSON Schemas of model descriptions and plans, as the server's
version ships them, at a stable URL (and in the OpenAPI document); an unknown name is a 404
that lists the schemas."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jaxinit.protocol import schemas
from jaxinit_server.core import Limits, Service
from jaxinit_server.rest.app import create_app


@pytest.fixture(scope="module")
def app() -> Iterator[Any]:
    service = Service(Limits())
    try:
        yield create_app(service)
    finally:
        service.close()


def _get(app: Any, *paths: str) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as http:
            return [await http.get(path) for path in paths]

    return asyncio.run(main())


def test_each_schema_at_its_url(app: Any) -> None:
    answers = _get(app, *(f"/v1/schemas/{name}" for name in schemas.SCHEMAS))
    for name, answer in zip(schemas.SCHEMAS, answers, strict=True):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/schema+json")
        assert answer.text == schemas.text(name)
        assert answer.json() == schemas.load(name)


def test_an_unknown_name_lists_the_schemas(app: Any) -> None:
    (answer,) = _get(app, "/v1/schemas/plan.json")
    assert answer.status_code == 404
    assert "Did you mean plan.schema.json?" in answer.text and "model-description.schema.json" in answer.text


def test_the_openapi_document_names_the_route(app: Any) -> None:
    (answer,) = _get(app, "/openapi.json")
    assert "/v1/schemas/{name}" in answer.json()["paths"]
