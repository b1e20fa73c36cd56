"""/docs and /redoc load from the server alone: every script, stylesheet and icon the pages
reference is served by the app itself (installed with it), none from a CDN, so they work in
an air-gapped cluster."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jaxinit_server.core import Limits, Service
from jaxinit_server.rest.app import create_app

# An attribute (src, href, ReDoc's spec-url) or Swagger UI's `url: '...'` setting.
REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl\s*:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def app() -> Iterator[Any]:
    service = Service(Limits())
    try:
        yield create_app(service)
    finally:
        service.close()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_and_every_asset_come_from_the_app(app: Any, page: str) -> None:
    async def main() -> tuple[httpx.Response, dict[str, httpx.Response]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as http:
            html = await http.get(page)
            references = {a or b for a, b in REFERENCE.findall(html.text)}
            return html, {ref: await http.get(ref) for ref in references}

    html, assets = asyncio.run(main())
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assert not re.findall(r"https?://", html.text), "the page names an outside address"
    if page == "/docs":
        assert '"validatorUrl": null' in html.text  # Swagger UI's validator badge would call out
    assert assets, html.text
    external = [ref for ref in assets if not ref.startswith("/")]
    assert not external, f"{page} loads {external} from outside the server"
    for ref, response in assets.items():
        assert response.status_code == 200, (ref, response.status_code)
        assert response.content, ref
    kinds = {ref.rsplit(".", 1)[-1] for ref in assets}
    assert "js" in kinds and "json" in kinds  # the UI's script and the OpenAPI document it renders
    if page == "/docs":
        assert "css" in kinds
