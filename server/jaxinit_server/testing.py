"""Run a real ``jaxinit-server`` process on free loopback ports (for tests and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["ServerProcess", "running_server"]

# The ready line, bare (--log-format text) or the message of a JSON object (json).
READY = re.compile(r"jaxinit-server ready grpc=([^\s\"]+) http=([^\s\"]+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    grpc_target: str
    http_url: str
    output: list[str]

    @property
    def grpc_url(self) -> str:
        scheme = "grpcs" if self.http_url.startswith("https:") else "grpc"  # TLS on both or neither
        return f"{scheme}://{self.grpc_target}"

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def server_command(*args: str, grpc_port: int = 0, http_port: int = 0) -> list[str]:
    """The command line of a server on loopback (port 0: a free one, reported when ready)."""
    return [
        sys.executable,
        "-m",
        "jaxinit_server.main",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--log-level",
        "warning",
        *args,
    ]


@contextlib.contextmanager
def running_server(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> Iterator[ServerProcess]:
    """Start ``jaxinit-server`` on free loopback ports; yield once it reports ready; stop it."""
    command = server_command(*args)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    output: list[str] = []
    found: list[re.Match[str]] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = READY.search(line)
            if match and not found:
                found.append(match)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError("server did not become ready:\n" + "".join(output))
    if not found:
        process.wait(5)
        raise RuntimeError("server exited before ready:\n" + "".join(output))
    server = ServerProcess(process, found[0].group(1), found[0].group(2), output)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
