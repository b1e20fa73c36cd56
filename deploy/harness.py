"""docker-compose.yml's topology as processes, without Docker: N ``jaxinit-server`` replicas
and the real nginx in front, started with the very file the compose file mounts
(``deploy/nginx/jaxinit.conf``), only the addresses and ports substituted.

    python deploy/harness.py                  # the default pool: bring it up on loopback, wait
    python deploy/harness.py --all-versions   # every JAX version's pool (venvs built first)

The balancer routes on the header x-jaxinit-jax-version to one pool per JAX version
(deploy/jax_versions.py). A pool's replicas run from that version's venv
(``.cache/jax-venvs/<version>``) with this checkout's code; the default pool's from this
Python when its JAX is the default version. A pool not asked for has no process: its
upstream points at a closed port, so a request for it fails (502) rather than being
answered by another JAX.

Tests and the load test (bench/load.py) use :func:`running_topology`. A replica can be
killed (SIGKILL), stopped (SIGTERM, drains) and started again on the same ports, which
is what the fault drills do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from jax_versions import DEFAULT, environment, python_for

from jaxinit_server.testing import server_command

ROOT = Path(__file__).resolve().parent.parent
LB_CONFIG = ROOT / "deploy" / "nginx" / "jaxinit.conf"
COMPOSE_FILE = ROOT / "docker-compose.yml"
GRPC_PORT, HTTP_PORT = 50051, 8000  # the ports inside the compose network
# The ready line, bare (--log-format text) or the message of a JSON object (json).
READY = re.compile(r"jaxinit-server ready grpc=([^\s\"]+) http=([^\s\"]+)")

__all__ = [
    "LB_CONFIG",
    "Replica",
    "Topology",
    "find_nginx",
    "free_port",
    "pool_args",
    "render_lb_config",
    "replica_version",
    "running_topology",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def upstream_names(config: str) -> list[str]:
    """The replica host names the balancer's configuration lists, in order."""
    return sorted(set(re.findall(rf"server\s+([\w.-]+):{GRPC_PORT}\b", config)))


def replica_version(name: str) -> str:
    """The JAX version a replica's pool serves, from its host name: jaxinit-jax-0-4-38-1 is
    0.4.38's; jaxinit-N is the default pool's."""
    found = re.fullmatch(r"jaxinit-jax-(\d+)-(\d+)-(\d+)-\d+", name)
    return ".".join(found.groups()) if found else DEFAULT


def render_lb_config(config: str, replicas: dict[str, tuple[int, int]], listen: tuple[int, int]) -> str:
    """``config`` with each replica's ``name:50051`` / ``name:8000`` and the two listen ports
    replaced by loopback addresses; anything else is left as it is.

    Raises ValueError when a name or port is not where it is expected, so the file and the
    harness cannot drift apart silently.
    """
    out = config
    for name, (grpc_port, http_port) in replicas.items():
        for inner, outer in ((GRPC_PORT, grpc_port), (HTTP_PORT, http_port)):
            out, n = re.subn(rf"\b{re.escape(name)}:{inner}\b", f"127.0.0.1:{outer}", out)
            if n == 0:
                raise ValueError(f"{name}:{inner} does not appear in the balancer's configuration")
    if leftover := upstream_names(out):
        raise ValueError(f"replicas {leftover} in the balancer's configuration have no process")
    for inner, outer in zip((GRPC_PORT, HTTP_PORT), listen, strict=True):
        out, n = re.subn(rf"(\blisten\s+){inner}\b", rf"\g<1>127.0.0.1:{outer}", out)
        if n != 1:
            raise ValueError(f"expected one `listen {inner}` in the balancer's configuration, found {n}")
    return out


@dataclass
class Replica:
    """One ``jaxinit-server`` process on fixed loopback ports (so it can come back on them)."""

    name: str
    grpc_port: int
    http_port: int
    args: Sequence[str] = ()
    python: str = sys.executable  # a venv's for a pool of another JAX version
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        command = server_command("--replica", self.name, *self.args, grpc_port=self.grpc_port, http_port=self.http_port)
        command[0] = self.python
        self._ready = threading.Event()
        self.process = process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment()
        )
        ready = self._ready

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.output.append(line)
                if READY.search(line):
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited before ready:\n" + "".join(self.output[-40:]))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout} s:\n" + "".join(self.output[-40:]))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the replica dies mid-whatever, as in a crash or an OOM kill."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM: not ready, stop taking calls, drain in-flight ones, exit. Returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@dataclass
class Topology:
    replicas: list[Replica]
    grpc_port: int
    http_port: int
    workdir: Path
    lb: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def lb_config(self) -> Path:
        return self.workdir / "jaxinit.conf"

    def lb_log(self) -> str:
        path = self.workdir / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _main_config(workdir: Path) -> str:
    """nginx's main file for the harness: what the image's /etc/nginx/nginx.conf does,
    with every path inside ``workdir``; the http block includes the mounted file."""
    user = ""
    if os.geteuid() == 0:  # workers would drop to `nobody` and lose the work folder
        import pwd

        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};"
    temp = "\n".join(
        f"    {kind}_temp_path tmp/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}
daemon off;
worker_processes 1;
pid nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    include jaxinit.conf;
}}
"""


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.1)


def pool_args(versions: Iterable[str], balancer: str) -> tuple[str, ...]:
    """The flags that tell every server the deployment's pools (``versions`` and the default
    pool, which the balancer sends unpinned requests to even when it is not running), each
    reached through the balancer at ``balancer``, as docker-compose.yml's JAXINIT_POOLS does."""
    listed = sorted({*versions, DEFAULT}, key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)
    return "--pools", ",".join(f"{v}={balancer}" for v in listed), "--default-pool", DEFAULT


@contextlib.contextmanager
def running_topology(
    *,
    server_args: Sequence[str] = (),
    workdir: Path | None = None,
    timeout: float = 240,
    versions: Sequence[str] | None = None,
) -> Iterator[Topology]:
    """The replicas the balancer's configuration names for the pools of ``versions`` (None:
    the default pool only), and nginx in front, on loopback. Every server is told the
    pools (:func:`pool_args`), so /v1/versions through the balancer lists them all. A
    version's venv is built first if it is missing (minutes)."""
    nginx = find_nginx()
    if nginx is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light or nginx)")
    config = LB_CONFIG.read_text()
    names = upstream_names(config)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxinit-lb-")))
        for sub in ("logs", "tmp", "cache"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        wanted = {DEFAULT} if versions is None else set(versions)
        pythons = {version: python_for(version) for version in sorted(wanted)}
        listen = free_port(), free_port()
        args = (*pool_args(wanted, f"http://127.0.0.1:{listen[1]}"), *server_args)
        replicas = [
            Replica(name, free_port(), free_port(), args, python=pythons[replica_version(name)])
            for name in names
            if replica_version(name) in wanted
        ]
        if missing := wanted - {replica_version(r.name) for r in replicas}:
            raise ValueError(f"the balancer's configuration has no pool for JAX {sorted(missing)}")
        # The pools not started: a closed port each (nothing listens on a port freed here).
        absent = {name: (free_port(), free_port()) for name in names if replica_version(name) not in wanted}
        topology = Topology(replicas, *listen, workdir)
        topology.lb_config.write_text(
            render_lb_config(
                config,
                {**{r.name: (r.grpc_port, r.http_port) for r in replicas}, **absent},
                (topology.grpc_port, topology.http_port),
            )
        )
        (workdir / "nginx.conf").write_text(_main_config(workdir))

        def stop_all() -> None:
            if topology.lb is not None and topology.lb.poll() is None:
                topology.lb.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
                try:
                    topology.lb.wait(15)
                except subprocess.TimeoutExpired:
                    topology.lb.kill()
            for replica in replicas:
                if replica.running:
                    with contextlib.suppress(Exception):
                        replica.stop(30)

        stack.callback(stop_all)
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(timeout)
        check = subprocess.run(
            [nginx, "-t", "-q", "-e", "stderr", "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf")],
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused the configuration:\n{check.stderr}")
        topology.lb = subprocess.Popen(
            [nginx, "-e", "stderr", "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_http(f"{topology.http_url}/readyz", topology.lb, 30)
        yield topology


def main(argv: Sequence[str]) -> int:
    from jax_versions import SUPPORTED

    versions = SUPPORTED if "--all-versions" in argv else None
    with running_topology(versions=versions) as topology:
        for r in topology.replicas:
            print(
                f"replica {r.name} (JAX {replica_version(r.name)}): "
                f"grpc=127.0.0.1:{r.grpc_port} http=http://127.0.0.1:{r.http_port}"
            )
        print(f"load balancer: grpc={topology.grpc_url} http={topology.http_url} (Ctrl-C stops all)", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
