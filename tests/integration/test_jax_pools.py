"""One pool per supported JAX version behind one address (docker-compose.yml, deploy/k8s,
deploy/nginx/jaxinit.conf, deploy/harness.py): the files agree with deploy/jax_versions.py
and with each other (cheap, default tier), and the pooled topology as processes routes
each request on its x-jaxinit-jax-version header or gRPC metadata to the pool of that
version, whose bytes are that version's local JAX's (release tier: the venvs, 6 servers)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator

import grpc
import httpx
import pytest
import yaml

import jaxinit
from helpers import ROOT
from jaxinit._grpc import request_to_proto
from jaxinit._http import get_url
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

sys.path.insert(0, str(ROOT / "deploy"))

import jax_versions  # noqa: E402
from harness import LB_CONFIG, Topology, find_nginx, render_lb_config, replica_version, running_topology  # noqa: E402
from harness import upstream_names as _upstream_names  # noqa: E402

HEADER = "x-jaxinit-jax-version"
K8S = ROOT / "deploy" / "k8s"


def _pool_map(config: str) -> dict[str, str]:
    """The balancer's map from the header's value to an upstream suffix ("default": its default)."""
    block = re.search(r"map \$http_x_jaxinit_jax_version \$jaxinit_pool \{(.*?)\}", config, re.S)
    assert block, "the balancer routes on no x-jaxinit-jax-version map"
    pairs = re.findall(r'^\s*("?[\w.]+"?)\s+("?[\w.]*"?);', block.group(1), re.M)
    return {key.strip('"'): value.strip('"') for key, value in pairs}


def _upstreams(config: str) -> dict[str, list[str]]:
    """upstream name -> the replica host names it lists."""
    return {
        name: re.findall(r"server\s+([\w.-]+):\d+", body)
        for name, body in re.findall(r"upstream (\w+) \{(.*?)\}", config, re.S)
    }


def _check_routing(config: str) -> None:
    """Each supported version's header leads to upstreams of that version's replicas only (gRPC
    and HTTP alike); no header, and any other value, to the default pool."""
    pools, upstreams = _pool_map(config), _upstreams(config)
    assert pools.get("default") == ""
    prefixes = {v.rsplit(".", 1)[0]: v for v in jax_versions.SUPPORTED}  # "0.8" -> "0.8.3", as servers match
    assert len(prefixes) == len(jax_versions.SUPPORTED)  # (one pool per minor version, or a prefix is ambiguous)
    assert set(pools) == {"default", *jax_versions.SUPPORTED, *prefixes}
    assert all(pools[prefix] == pools[version] for prefix, version in prefixes.items())
    for version in jax_versions.SUPPORTED:
        for kind in ("grpc", "http"):
            names = upstreams[f"jaxinit_{kind}{pools[version]}"]
            assert names and {replica_version(n) for n in names} == {version}, (version, kind, names)
    assert re.search(r"grpc_pass grpc://jaxinit_grpc\$jaxinit_pool;", config)
    assert len(re.findall(r"proxy_pass http://jaxinit_http\$jaxinit_pool;", config)) == 3
    assert not re.search(r"(grpc|proxy)_pass \S+://jaxinit_(grpc|http);", config)  # nothing bypasses the map
    # A cached GET answer is one pool's: the key holds the pool.
    assert re.search(r'proxy_cache_key "[^"]*\$jaxinit_pool[^"]*";', config)


def test_the_balancer_routes_each_version_to_its_own_pool() -> None:
    _check_routing(LB_CONFIG.read_text())


def test_the_compose_file_runs_one_pool_per_version_behind_the_balancer() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    replicas = sorted(name for name in services if name.startswith("jaxinit-"))
    assert replicas == _upstream_names(LB_CONFIG.read_text())
    assert {replica_version(name) for name in replicas} == set(jax_versions.SUPPORTED)
    for name in replicas:
        build = services[name]["build"]
        version = replica_version(name)
        # The default pool's image is the default install; another pool's pins its JAX.
        assert build.get("args", {}).get("JAX_VERSION", jax_versions.DEFAULT) == version, name
        if version != jax_versions.DEFAULT:
            assert services[name]["image"] == f"jaxinit:jax-{version}"
    assert set(services["lb"]["depends_on"]) == set(replicas)


def test_nginx_accepts_the_pooled_configuration(tmp_path: pathlib.Path) -> None:
    """Variables naming upstreams in grpc_pass and proxy_pass, the map: nginx -t, on loopback."""
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    config = LB_CONFIG.read_text()
    ports = {name: (20_000 + 2 * i, 20_001 + 2 * i) for i, name in enumerate(_upstream_names(config))}
    (tmp_path / "jaxinit.conf").write_text(render_lb_config(config, ports, (30_000, 30_001)))
    for sub in ("logs", "tmp", "cache"):
        (tmp_path / sub).mkdir()
    (tmp_path / "nginx.conf").write_text(
        "pid nginx.pid; error_log logs/error.log; events {} http { access_log off; include jaxinit.conf; }\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-q", "-e", "stderr", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def _k8s_docs() -> list[dict[str, object]]:
    return [d for path in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_kubernetes_manifests_run_one_pool_per_version_behind_nginx() -> None:
    docs = _k8s_docs()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}  # type: ignore[index]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}  # type: ignore[index]
    versions: dict[str, str] = {}
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]  # type: ignore[index]
        if "jaxinit.dev/jax-version" in labels:
            versions[name] = labels["jaxinit.dev/jax-version"]
            image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]  # type: ignore[index]
            if versions[name] != jax_versions.DEFAULT:
                assert image == f"jaxinit:jax-{versions[name]}", name
    assert sorted(versions.values()) == sorted(jax_versions.SUPPORTED)
    # The balancer: nginx with the same routing, its upstreams the pools' Services.
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    config = config_map["data"]["jaxinit.conf"]  # type: ignore[index]
    pools, upstreams = _pool_map(config), _upstreams(config)
    assert pools == _pool_map(LB_CONFIG.read_text())
    for version in jax_versions.SUPPORTED:
        for kind in ("grpc", "http"):
            (target,) = upstreams[f"jaxinit_{kind}{pools[version]}"]
            service = services[target]
            selector = service["spec"]["selector"]  # type: ignore[index]
            assert selector.get("jaxinit.dev/jax-version") == version, (version, target)
    assert "jaxinit-lb" in deployments and "jaxinit-lb" in services


# --- the pooled topology as processes (release tier) ------------------------------------


def _local_bytes(version: str, seed: int, shape: tuple[int, ...]) -> bytes:
    """lecun_normal's bytes from ``version``'s own JAX, in its own default PRNG mode."""
    script = (
        "import sys, jax, numpy as np; "
        f"sys.stdout.buffer.write(np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key({seed}), {shape!r}))"
        ".tobytes())"
    )
    return subprocess.run(
        [jax_versions.python_for(version), "-c", script], capture_output=True, check=True, timeout=300
    ).stdout


@pytest.fixture(scope="module")
def pools() -> Iterator[Topology]:
    if find_nginx() is None:
        pytest.skip("nginx is not installed")
    with running_topology(server_args=["--no-warm-up"], versions=jax_versions.SUPPORTED, timeout=600) as topology:
        yield topology


@pytest.mark.release
def test_each_version_header_gets_that_versions_bytes(pools: Topology) -> None:
    shape = (32, 16)
    want = {version: _local_bytes(version, 7, shape) for version in jax_versions.SUPPORTED}
    assert len(set(want.values())) > 1  # the versions differ here, or this test shows nothing
    request = request_to_proto(jaxinit.Client(pools.grpc_url).request("lecun_normal", 7, shape))
    asks = [(v, v) for v in jax_versions.SUPPORTED] + [(None, jax_versions.DEFAULT), ("0.8", "0.8.3")]
    with (
        httpx.Client(base_url=pools.http_url, timeout=120) as http,
        grpc.insecure_channel(f"127.0.0.1:{pools.grpc_port}") as channel,
    ):
        stub = pb_grpc.InitializersStub(channel)
        for asked, served in asks:
            headers = {} if asked is None else {HEADER: asked}
            # REST: the bytes, the provenance, the replica, the registry's server identity.
            body = {"initializer": "lecun_normal", "shape": list(shape), "key": {"seed": 7}}
            response = http.post("/v1/generate", json=body, headers=headers)
            assert response.status_code == 200, response.text
            assert response.content == want[served], (asked, served)
            assert json.loads(response.headers["x-jaxinit-provenance"])["jax_version"] == served
            assert replica_version(response.headers["x-jaxinit-replica"]) == served
            described = http.get("/v1/initializers", headers=headers).json()
            assert described["server"]["jax_version"] == served
            # gRPC: the same, routed on the call's metadata.
            call = stub.Generate(request, timeout=120, metadata=tuple(headers.items()))
            messages = list(call)
            data = b"".join(m.data.data for m in messages if m.WhichOneof("payload") == "data")
            (header,) = [m.header for m in messages if m.WhichOneof("payload") == "header"]
            assert data == want[served], (asked, served)
            assert header.provenance.jax_version == served
            assert replica_version(dict(call.initial_metadata())["x-jaxinit-replica"]) == served

        # A version no pool serves goes to the default pool, whose servers refuse it: never other bytes.
        refused = http.post("/v1/generate", json=body, headers={HEADER: "0.3.0"})
        assert refused.status_code == 412 and "0.3.0" in refused.text and jax_versions.DEFAULT in refused.text
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Generate(request, timeout=120, metadata=((HEADER, "0.3.0"),)))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "0.3.0" in str(caught.value.details())

        # The GET form's cache keeps each pool's answer apart.
        url = get_url(jaxinit.Client(pools.http_url).request("lecun_normal", 7, shape, "float32"))
        old, new = jax_versions.SUPPORTED[0], jax_versions.DEFAULT
        for version, status in ((old, "MISS"), (new, "MISS"), (old, "HIT"), (new, "HIT")):
            response = http.get(url, headers={HEADER: version, "Accept": "application/octet-stream"})
            assert response.content == want[version] and response.headers["x-cache-status"] == status


def _without_upstreams(config: str) -> str:
    """The configuration without its comments and upstream blocks: what routes and caches."""
    text = re.sub(r"upstream \w+ \{.*?\}", "", config, flags=re.S)
    return "\n".join(line for line in (ln.split("#")[0].rstrip() for ln in text.splitlines()) if line.strip())


def test_the_kubernetes_balancer_is_the_compose_one_but_for_its_upstreams() -> None:
    docs = _k8s_docs()
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    config = config_map["data"]["jaxinit.conf"]  # type: ignore[index]
    assert _without_upstreams(config) == _without_upstreams(LB_CONFIG.read_text())


def test_each_pools_pod_is_the_default_pools_but_for_its_jax() -> None:
    deployments = [d for d in _k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] != "jaxinit-lb"]  # type: ignore[index]
    default = next(d for d in deployments if d["metadata"]["name"] == "jaxinit")  # type: ignore[index]

    def pod(d: dict[str, object]) -> object:
        spec = json.loads(json.dumps(d["spec"]))
        spec.pop("replicas", None)
        spec["selector"]["matchLabels"].pop("jaxinit.dev/jax-version")
        spec["template"]["metadata"]["labels"].pop("jaxinit.dev/jax-version")
        spec["template"]["spec"]["containers"][0].pop("image")
        return spec

    assert len(deployments) == len(jax_versions.SUPPORTED)
    assert all(pod(d) == pod(default) for d in deployments)
