"""The client checks a model description against the JSON Schema before sending it: a
mistake is an InvalidArgument naming its JSON path, and nothing goes on the wire (sync and
async clients, and the CLI's `jaxinit model FILE`)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re

import httpx
import pytest

import jaxinit
from jaxinit import cli
from jaxinit import models as m
from jaxinit.protocol import schemas

TYPO = {"type": "Module", "children": [{"type": "Dense", "in_features": 784, "featurs": 256}]}
SAID = "model.children[0]: 'features' is required; unknown field(s) ['featurs'] for Dense; Did you mean features"


def _nothing_sent() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    return httpx.MockTransport(handler), sent


def test_the_client_validates_with_the_shipped_schema() -> None:
    assert schemas.validator() is not None, "fastjsonschema, a dependency of the client, is installed"


def test_a_mistake_is_refused_before_the_wire() -> None:
    transport, sent = _nothing_sent()
    with jaxinit.Client("http://127.0.0.1:1", transport=transport, retries=0) as client:
        with pytest.raises(jaxinit.InvalidArgument, match=re.escape(SAID)):
            client.init_model(TYPO, 0)
        with pytest.raises(jaxinit.InvalidArgument, match=r"model.layers\[1\].name: is not allowed here"):
            client.init_model(m.Sequential(m.Dense(2, 2), {**m.Dense(2, 2), "name": "x"}), 0)
    assert not sent


def test_the_async_client_too() -> None:
    transport, sent = _nothing_sent()

    async def main() -> None:
        async with jaxinit.AsyncClient("http://127.0.0.1:1", transport=transport, retries=0) as client:
            typo = {"type": "Dense", "in_features": 2, "features": 2, "kernel_init": "lecun_normall"}
            with pytest.raises(
                jaxinit.InvalidArgument,
                match=r"model.kernel_init: 'kernel_init' is one of .*got 'lecun_normall'; Did you mean lecun_normal",
            ):
                await client.init_model(typo, 0)

    asyncio.run(main())
    assert not sent


def test_a_valid_description_goes_out_as_given() -> None:
    transport, sent = _nothing_sent()
    with (
        jaxinit.Client("http://127.0.0.1:1", transport=transport, retries=0) as client,
        pytest.raises(jaxinit.JaxinitError),
    ):
        client.init_model(m.Module(m.Dense(4, 2)), 0)  # the mock server answers 500
    posted = [r for r in sent if r.method == "POST" and r.url.path == "/v1/models/init"]
    assert posted and json.loads(posted[0].read())["model"] == m.Module(m.Dense(4, 2))


def test_the_cli_says_where(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    description = tmp_path / "mlp.json"
    description.write_text(json.dumps(TYPO))
    status = cli.main(["--url", "http://127.0.0.1:1", "model", str(description), "--seed", "0", "-o", "x.npz"])
    assert status == 2
    assert SAID in capsys.readouterr().err
