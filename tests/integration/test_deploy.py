"""Deployment: the compose file, the Kubernetes manifests and the Dockerfile are checked by
tools that can fail; the compose topology runs as processes (3 replicas + the real nginx with
the mounted configuration) and takes load, a SIGKILL and a rolling restart without one failed
or corrupted answer."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import jax
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import jaxinit
from jaxinit._grpc import request_to_proto
from jaxinit._http import get_url
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))

from harness import (  # noqa: E402
    LB_CONFIG,
    Replica,
    Topology,
    find_nginx,
    render_lb_config,
    running_topology,
    upstream_names,
)

K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
REQUIRED = os.environ.get("JAXINIT_REQUIRE_SYSTEM_TOOLS") == "1"  # CI: a missing tool fails


def _tool(name: str, found: str | None) -> str:
    if found is None:
        if REQUIRED:
            pytest.fail(f"{name} is not installed; `make test` installs it on Debian as root")
        pytest.skip(f"{name} is not installed (Debian: apt-get install {name})")
    return found


def _compose() -> str:
    return _tool("docker-compose", shutil.which("docker-compose"))


def _nginx() -> str:
    return _tool("nginx", find_nginx())


# --- the files ------------------------------------------------------------------------


def test_compose_file_validates_and_has_the_topology(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [_compose(), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = sorted(name for name in services if name.startswith("jaxinit-"))
    assert replicas == upstream_names(LB_CONFIG.read_text())
    assert {"jaxinit-1", "jaxinit-2", "jaxinit-3"} <= set(replicas)  # the default pool (test_jax_pools.py: the rest)
    lb = services["lb"]
    assert "./deploy/nginx/jaxinit.conf:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    assert sorted(lb["ports"]) == ["50051:50051", "8000:8000"]
    assert {name: dep["condition"] for name, dep in lb["depends_on"].items()} == dict.fromkeys(
        replicas, "service_healthy"
    )
    for name in replicas:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["mem_limit"] and service["cpus"]
        assert "ports" not in service  # only the balancer is published

    # The same check refuses a broken file: it can fail.
    text = (ROOT / "docker-compose.yml").read_text()
    mutated = text.replace("jaxinit-3:\n        condition", "jaxinit-4:\n        condition")
    assert mutated != text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(mutated)
    result = subprocess.run([_compose(), "-f", str(broken), "config", "-q"], capture_output=True, text=True)
    assert result.returncode != 0 and "jaxinit-4" in result.stderr


def _validate_k8s(*paths: pathlib.Path) -> subprocess.CompletedProcess[str]:
    tool = pathlib.Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run([str(tool), "--strict", *map(str, paths)], capture_output=True, text=True)


def test_kubernetes_manifests_validate_against_the_schemas(tmp_path: pathlib.Path) -> None:
    result = _validate_k8s(*K8S)
    assert result.returncode == 0, result.stdout + result.stderr
    docs = {d["kind"]: d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d and "kind" in d}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "grpc" in container["livenessProbe"] and "grpc" in container["startupProbe"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    grace = next(float(e["value"]) for e in container["env"] if e["name"] == "JAXINIT_GRACE_SECONDS")
    assert pod["terminationGracePeriodSeconds"] > grace + 5  # drain, after the preStop pause
    services = [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Service"]
    assert any(s["spec"].get("clusterIP") == "None" for s in services)  # headless: client-side balancing

    # A typo is caught: the check can fail.
    typo = tmp_path / "deployment.yaml"
    manifest = (ROOT / "deploy" / "k8s" / "deployment.yaml").read_text()
    typo.write_text(manifest.replace("readinessProbe", "readinesProbe", 1))
    assert _validate_k8s(typo).returncode != 0


def test_dockerfile_is_multistage_pinned_nonroot_and_health_checked() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2 and all(re.search(r":\d+\.\d+\.\d+", s) for s in stages)  # pinned bases
    assert "--constraint constraints.txt" in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.search(r"^HEALTHCHECK .*\n?.*/readyz", text, re.M)
    assert re.search(r"^VOLUME .*/var/cache/jaxinit", text, re.M) and "JAXINIT_COMPILATION_CACHE_DIR" in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY {path}: not in the repository"


def test_the_harness_substitutes_addresses_and_ports_only() -> None:
    config = LB_CONFIG.read_text()
    replicas = {name: (10_000 + i, 20_000 + i) for i, name in enumerate(upstream_names(config))}
    rendered = render_lb_config(config, replicas, (30_000, 30_001))
    assert "listen 127.0.0.1:30000 http2;" in rendered and "listen 127.0.0.1:30001;" in rendered
    assert "server 127.0.0.1:10000 " in rendered and "server 127.0.0.1:20002 " in rendered
    assert not upstream_names(rendered)
    # Nothing else changed: undo the substitutions and get the file back.
    undone = rendered
    for name, (g, h) in replicas.items():
        undone = undone.replace(f"127.0.0.1:{g}", f"{name}:50051").replace(f"127.0.0.1:{h}", f"{name}:8000")
    undone = undone.replace("127.0.0.1:30000", "50051").replace("127.0.0.1:30001", "8000")
    assert undone == config
    with pytest.raises(ValueError, match="jaxinit-3"):
        render_lb_config(config, {k: v for k, v in replicas.items() if k != "jaxinit-3"}, (1, 2))


# --- the topology as processes ---------------------------------------------------------


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    _nginx()
    with running_topology(server_args=["--no-warm-up"]) as topo:
        yield topo


def _local(name: str, seed: int, shape: tuple[int, ...], dtype: str = "float32") -> bytes:
    factory = getattr(jax.nn.initializers, name)()
    return np.asarray(factory(jax.random.key(seed), shape, jax.numpy.dtype(dtype))).tobytes()


@pytest.mark.release
def test_grpc_is_balanced_per_call_over_one_connection(topology: Topology) -> None:
    request = request_to_proto(jaxinit.Client(topology.grpc_url).request("lecun_normal", 7, (32, 16)))
    served: collections.Counter[str] = collections.Counter()
    with grpc.insecure_channel(f"127.0.0.1:{topology.grpc_port}") as channel:  # one HTTP/2 connection
        stub = pb_grpc.InitializersStub(channel)
        for _ in range(9):
            call = stub.Generate(request, timeout=60)
            data = b"".join(m.data.data for m in call if m.WhichOneof("payload") == "data")
            served[dict(call.initial_metadata())["x-jaxinit-replica"]] += 1
            assert data == _local("lecun_normal", 7, (32, 16))
    assert set(served) == {r.name for r in topology.replicas}, served


@pytest.mark.release
def test_rest_is_balanced_and_the_get_form_is_cached(topology: Topology) -> None:
    served: collections.Counter[str] = collections.Counter()
    with httpx.Client(base_url=topology.http_url, timeout=60) as http:
        for seed in range(6):
            body = {"initializer": "he_normal", "shape": [16, 8], "key": {"seed": seed}}
            response = http.post("/v1/generate", json=body)
            assert response.status_code == 200 and response.content == _local("he_normal", seed, (16, 8))
            served[response.headers["x-jaxinit-replica"]] += 1
        assert len(served) == 3, served

        request = jaxinit.Client(topology.http_url).request("glorot_uniform", 11, (64, 32), "float32")
        url = get_url(request)
        statuses = []
        for _ in range(3):
            response = http.get(url, headers={"Accept": "application/octet-stream"})
            assert response.status_code == 200 and response.content == _local("glorot_uniform", 11, (64, 32))
            statuses.append(response.headers["x-cache-status"])
        assert statuses == ["MISS", "HIT", "HIT"]
        # A caller with credentials never shares the cache, in either direction.
        response = http.get(url, headers={"Accept": "application/octet-stream", "Authorization": "Bearer x"})
        assert response.headers["x-cache-status"] == "BYPASS"
        # The same tensor as JSON is another entry, not the bytes answer.
        response = http.get(url, headers={"Accept": "application/json"})
        assert response.status_code == 200 and response.headers["x-cache-status"] == "MISS"

    with jaxinit.Client(topology.http_url, cacheable=True) as client:  # the client's GET mode
        got = client.glorot_uniform()(11, (64, 32), "float32")
    assert got.tobytes() == _local("glorot_uniform", 11, (64, 32))


def _serving(topology: Topology, transport: str) -> Replica | None:
    """The replica with a call of ``transport`` in flight, from its own /metrics."""
    for replica in topology.replicas:
        if not replica.running:
            continue
        try:
            text = httpx.get(f"http://127.0.0.1:{replica.http_port}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "jaxinit_streams_in_flight" and s.labels["transport"] == transport and s.value > 0:
                    return replica
    return None


@pytest.mark.release
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_replica_killed_mid_stream_costs_nothing(topology: Topology, transport: str) -> None:
    """SIGKILL the replica that is streaming a 256 MiB tensor: the client resumes from the
    last element it has, on another replica, and the bytes equal local JAX's."""
    shape = (8192, 8192)
    killed: list[str] = []
    received: list[int] = []

    def kill_the_server() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            if (victim := _serving(topology, transport)) is not None and received and received[-1] > 0:
                victim.kill()
                killed.append(victim.name)
            time.sleep(0.01)

    url = topology.grpc_url if transport == "grpc" else topology.http_url
    killer = threading.Thread(target=kill_the_server)
    with jaxinit.Client(url, retries=3) as client:
        announced: list[int] = []
        client._transport.on_progress = lambda got, total: (received.append(got), announced.append(total))
        killer.start()
        got = client.lecun_normal()(5, shape)
        killer.join()
    try:
        assert killed, "no replica was caught streaming"
        assert got.tobytes() == _local("lecun_normal", 5, shape)
        whole = 8192 * 8192 * 4
        # Resumed, not fetched again: the second answer announced only what was missing.
        assert len([a for a in announced if a]) == 2 and sum(announced) < 2 * whole, announced
    finally:
        for replica in topology.replicas:
            if not replica.running:
                replica.start()
                replica.wait_ready()


@pytest.mark.release
@pytest.mark.parametrize("drill", ["kill", "rolling"])
def test_load_with_a_drill_ends_without_a_failed_or_corrupt_answer(tmp_path: pathlib.Path, drill: str) -> None:
    _nginx()
    out = tmp_path / "load.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "load.py"),
            "--duration",
            "6",
            "--concurrency",
            "6",
            "--drill",
            drill,
            "--no-warm-up",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    every = summary["modes"]["all"]
    assert every["requests"] > 20 and every["failed"] == 0 and every["corrupt"] == 0
    assert all(summary["modes"][m]["ok"] > 0 for m in ("grpc", "rest", "rest-get"))
    expected_events = 2 if drill == "kill" else 6  # kill + back, or stop + back for each of 3
    assert len(summary["events"]) == expected_events, summary["events"]
    if drill == "rolling":
        assert all("exit code 0" in e for e in summary["events"] if "SIGTERM" in e)
