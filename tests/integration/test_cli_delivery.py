"""The CLI's `wrote` line says how the tensor came (streamed or through shared memory) and how
the server came by it (made, or from its cache), against a real server; --no-shared-memory
keeps a loopback call in the stream."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from jaxinit import cli
from jaxinit_server.testing import ServerProcess, running_server


@pytest.fixture(scope="module")
def shm_server() -> Iterator[ServerProcess]:
    with running_server("--no-warm-up", "--shared-memory") as srv:
        yield srv


def _wrote(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("wrote ")]
    return line


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_wrote_line_says_how_the_tensor_came(
    shm_server: ServerProcess, transport: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = shm_server.grpc_url if transport == "grpc" else shm_server.http_url
    # orthogonal is made whole once and cached: the first call makes it, the second is a hit.
    get = ["get", "orthogonal", "--shape", "64,64", "--seed", "3", "-o", str(tmp_path / "q.npy")]
    first = _wrote(["--url", url, "--no-shared-memory", *get], capsys)
    assert first.endswith("; streamed, made for this request") or first.endswith(
        "; streamed, from the server's memory cache"
    ), first  # the other transport's run may have made it
    second = _wrote(["--url", url, "--shared-memory", *get], capsys)
    assert second.endswith("; through shared memory, from the server's memory cache"), second
