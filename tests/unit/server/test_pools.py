"""What a pooled deployment lists (jaxinit_server.pools): --pools parsed, each pool asked
``/v1/versions?scope=server`` with its version pinned, answers kept briefly, a pool that
does not answer (or answers as another version) listed as unreachable, one default."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from jaxinit.protocol.errors import InvalidArgument
from jaxinit_server.pools import Deployment, Pool, parse_pools

HERE = "0.10.2"
DESCRIBED: dict[str, Any] = {
    "server": {
        "jax_version": HERE,
        "jaxlib_version": HERE,
        "backend": "cpu",
        "device_kind": "cpu",
        "jaxinit_version": "0.3.0",
        "threefry_partitionable": True,
        "enable_x64": False,
    },
    "key_impls": ["threefry2x32"],
    "dtypes": ["float32"],
}


def old_pool(asked: list[httpx.Request] | None = None, version: str = "0.4.38") -> httpx.ASGITransport:
    """An in-process pool of JAX ``version``: its server-scope answer; records each request."""
    app = FastAPI()

    @app.get("/v1/versions")
    async def versions(request: Request) -> dict[str, Any]:
        if asked is not None:
            asked.append(request)  # type: ignore[arg-type]
        entry = {**DESCRIBED["server"], "jax_version": version, "key_impls": ["threefry2x32"], "dtypes": ["float32"]}
        return {"versions": [{**entry, "threefry_partitionable": False, "default": True, "reachable": True}]}

    return httpx.ASGITransport(app=app)


def refusing(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def listed(deployment: Deployment, scope: str = "deployment") -> list[dict[str, Any]]:
    return asyncio.run(deployment.versions(DESCRIBED, scope))["versions"]  # type: ignore[no-any-return]


def test_pools_parse_in_order_and_bad_ones_are_named() -> None:
    assert parse_pools(None) == parse_pools(" ") == ()
    assert parse_pools("0.8.3=http://a:8000/,0.4.38 = https://lb") == (
        Pool("0.8.3", "http://a:8000"),
        Pool("0.4.38", "https://lb"),
    )
    for bad in ("0.8.3", "0.8.3=a:8000", "=http://a", "0.8.3=http://a,0.8.3=http://b"):
        with pytest.raises(ValueError, match="--pools"):
            parse_pools(bad)


def test_a_lone_server_lists_itself_as_the_default() -> None:
    (entry,) = listed(Deployment(HERE))
    assert entry["jax_version"] == HERE and entry["default"] is True and entry["reachable"] is True
    assert entry["key_impls"] == ["threefry2x32"] and entry["dtypes"] == ["float32"]


def test_each_pool_is_asked_for_itself_only_pinned_to_its_version() -> None:
    asked: list[Any] = []
    pools = parse_pools(f"{HERE}=http://lb:8000,0.4.38=http://old:8000")
    deployment = Deployment(HERE, pools, default_pool=HERE, mounts={"http://old:8000": old_pool(asked)})
    mine, old = listed(deployment)
    assert (mine["jax_version"], mine["default"], mine["reachable"]) == (HERE, True, True)
    # The pool's own entry, but "default" as this deployment says (the pool's says True).
    assert (old["jax_version"], old["default"], old["reachable"]) == ("0.4.38", False, True)
    assert old["threefry_partitionable"] is False
    (request,) = asked
    assert request.query_params["scope"] == "server" and request.headers["x-jaxinit-jax-version"] == "0.4.38"
    # scope=server: this server alone, nobody asked.
    assert [e["jax_version"] for e in listed(deployment, "server")] == [HERE]
    assert len(asked) == 1


def test_the_list_keeps_the_pools_order_so_every_pool_answers_alike() -> None:
    """A 0.4.38 server of the same deployment lists the same pools in the same order."""
    new = {"http://new:8000": httpx.MockTransport(refusing)}
    deployment = Deployment(
        "0.4.38", parse_pools(f"{HERE}=http://new:8000,0.4.38=http://lb"), default_pool=HERE, mounts=new
    )
    described = {**DESCRIBED, "server": {**DESCRIBED["server"], "jax_version": "0.4.38"}}
    got = asyncio.run(deployment.versions(described))["versions"]
    assert [(e["jax_version"], e["default"], e["reachable"]) for e in got] == [
        (HERE, True, False),
        ("0.4.38", False, True),
    ]
    deployment = Deployment(HERE, parse_pools("0.4.38=http://old:8000"), mounts={"http://old:8000": old_pool()})
    assert [e["jax_version"] for e in listed(deployment)] == [HERE, "0.4.38"]  # its own first when not listed


def test_a_pool_that_does_not_answer_is_listed_unreachable_not_an_error() -> None:
    pools = parse_pools(f"{HERE}=http://lb,0.4.38=http://old:8000,0.8.3=http://gone:8000,0.6.2=http://liar:8000")
    mounts = {
        "http://old:8000": old_pool(),
        "http://gone:8000": httpx.MockTransport(refusing),
        "http://liar:8000": old_pool(version=HERE),  # answers, as the wrong version
    }
    deployment = Deployment(HERE, pools, default_pool="0.8.3", mounts=mounts)
    got = listed(deployment)
    assert [e["jax_version"] for e in got] == [HERE, "0.4.38", "0.8.3", "0.6.2"]
    assert got[2] == {"jax_version": "0.8.3", "reachable": False, "default": True}  # the default, even so
    assert got[3] == {"jax_version": "0.6.2", "reachable": False, "default": False}
    assert [e["default"] for e in got] == [False, False, True, False]


def test_answers_are_kept_for_the_ttl_then_asked_again() -> None:
    asked: list[Any] = []
    now = [0.0]
    deployment = Deployment(
        HERE,
        parse_pools("0.4.38=http://old:8000"),
        ttl=5,
        mounts={"http://old:8000": old_pool(asked)},
        clock=lambda: now[0],
    )
    listed(deployment)
    now[0] = 4.9
    listed(deployment)
    assert len(asked) == 1
    now[0] = 5.1
    listed(deployment)
    assert len(asked) == 2


def test_a_default_pool_the_deployment_lacks_and_an_unknown_scope_are_refused() -> None:
    with pytest.raises(ValueError, match="--default-pool 0.9"):
        Deployment(HERE, parse_pools("0.4.38=http://old"), default_pool="0.9")
    assert Deployment(HERE, parse_pools("0.4.38=http://old"), default_pool="0.10").default_pool == "0.10"
    with pytest.raises(InvalidArgument, match="scope"):
        listed(Deployment(HERE), "everything")


def test_the_settings_refuse_bad_pools_and_a_default_pool_the_deployment_lacks() -> None:
    import jax
    from pydantic import ValidationError

    from jaxinit_server.settings import Settings

    with pytest.raises(ValidationError, match="is not VERSION=URL"):
        Settings(pools="0.8.3=pool:8000")
    with pytest.raises(ValidationError, match="--default-pool 0.9"):
        Settings(pools="0.8.3=http://pool:8000", default_pool="0.9")
    ok = Settings(pools="0.8.3=http://pool:8000", default_pool=jax.__version__, api_keys="a,b")
    assert ok.pool_list() == (Pool("0.8.3", "http://pool:8000"),) and ok.api_token() == "a"


def test_callers_at_once_share_one_ask() -> None:
    asked: list[Any] = []
    deployment = Deployment(HERE, parse_pools("0.4.38=http://old:8000"), mounts={"http://old:8000": old_pool(asked)})

    async def many() -> list[dict[str, Any]]:
        return await asyncio.gather(*(deployment.versions(DESCRIBED) for _ in range(8)))

    answers = asyncio.run(many())
    assert len(asked) == 1 and all(a == answers[0] for a in answers)
