"""What a pooled deployment says it serves: every server is told the deployment's pools
(docker-compose.yml, deploy/k8s, deploy/harness.py: the same list for all, the default pool
named), so ``GET /v1/versions`` and gRPC ``ListVersions`` through the balancer list every
pool, whichever pool answers (cheap checks of the files; the topology, release tier)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import yaml

import jaxinit
from helpers import ROOT
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.pools import parse_pools

sys.path.insert(0, str(ROOT / "deploy"))

import jax_versions  # noqa: E402
from harness import Topology, find_nginx, pool_args, running_topology  # noqa: E402

HEADER = "x-jaxinit-jax-version"
OLD = "0.8.3"  # the pool beside the default one in the topology (one venv to build)


def _pod_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _every_server_env() -> list[tuple[str, dict[str, str]]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    found = [(name, service["environment"]) for name, service in compose.items() if name.startswith("jaxinit-")]
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"] != "jaxinit-lb":
                (container,) = doc["spec"]["template"]["spec"]["containers"]
                found.append((f"k8s {doc['metadata']['name']}", _pod_env(container)))
    return found


def test_every_server_is_told_every_pool_and_the_default_one() -> None:
    servers = _every_server_env()
    assert len(servers) == 2 * len(jax_versions.SUPPORTED) + 2  # compose: 3 default replicas; k8s: 1 each
    for name, env in servers:
        pools = parse_pools(env["JAXINIT_POOLS"])
        assert sorted(p.version for p in pools) == sorted(jax_versions.SUPPORTED), name
        assert env["JAXINIT_DEFAULT_POOL"] == jax_versions.DEFAULT, name
    # k8s: each pool's own Service (the default pool's is `jaxinit`); compose: the balancer.
    k8s = parse_pools(dict(servers)["k8s jaxinit"]["JAXINIT_POOLS"])
    assert {p.version: p.url for p in k8s} == {
        v: "http://jaxinit:8000" if v == jax_versions.DEFAULT else f"http://jaxinit-jax-{v.replace('.', '-')}:8000"
        for v in jax_versions.SUPPORTED
    }
    assert {p.url for p in parse_pools(dict(servers)["jaxinit-1"]["JAXINIT_POOLS"])} == {"http://lb:8000"}


def test_the_harness_tells_every_server_the_pools_it_runs_and_the_default() -> None:
    flags = pool_args([OLD], "http://127.0.0.1:9")
    assert flags[0] == "--pools" and flags[2:] == ("--default-pool", jax_versions.DEFAULT)
    assert [p.version for p in parse_pools(flags[1])] == [jax_versions.DEFAULT, OLD]  # newest first


# --- the pooled topology as processes (release tier) ------------------------------------


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    if find_nginx() is None:
        pytest.skip("nginx is not installed")
    with running_topology(server_args=["--no-warm-up"], versions=[jax_versions.DEFAULT, OLD], timeout=600) as running:
        yield running


def _summary(versions: list[dict[str, Any]]) -> list[tuple[str, bool, bool]]:
    return [(v["jax_version"], v["default"], v["reachable"]) for v in versions]


@pytest.mark.release
def test_the_balancer_lists_every_pool_on_both_transports(topology: Topology) -> None:
    want = [(jax_versions.DEFAULT, True, True), (OLD, False, True)]
    with (
        httpx.Client(base_url=topology.http_url, timeout=60) as http,
        grpc.insecure_channel(f"127.0.0.1:{topology.grpc_port}") as channel,
    ):
        stub = pb_grpc.InitializersStub(channel)
        lists = {}
        # Unpinned (the default pool answers) and pinned to the old pool (it answers): the same list.
        for pin in (None, OLD):
            headers = {} if pin is None else {HEADER: pin}
            response = http.get("/v1/versions", headers=headers)
            assert response.status_code == 200, response.text
            lists[pin] = response.json()["versions"]
            assert _summary(lists[pin]) == want, pin
            served = stub.ListVersions(pb.ListVersionsRequest(), metadata=tuple(headers.items()), timeout=60)
            assert [(v.jax_version, v.default, v.reachable) for v in served.versions] == want, pin
            # Only the server that answered, with scope=server: the pool of the pin.
            alone = http.get("/v1/versions", params={"scope": "server"}, headers=headers).json()["versions"]
            assert [v["jax_version"] for v in alone] == [pin or jax_versions.DEFAULT]
        # Each entry is what that pool's own servers report.
        old = lists[None][1]
        assert old == lists[OLD][1] and old["jaxlib_version"] == OLD and old["key_impls"]
    # The client: the same list over both transports, and a version it lists can be pinned.
    for url in (topology.grpc_url, topology.http_url):
        with jaxinit.Client(url) as client:
            assert _summary(client.list_versions()["versions"]) == want, url
        with jaxinit.Client(url, jax_version=OLD) as pinned:
            assert pinned.generate("lecun_normal", 0, (2, 2)).provenance.jax_version == OLD
