from __future__ import annotations

import pathlib
import sys
import warnings
from collections.abc import Iterator

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from helpers import ServerProcess, running_server  # noqa: E402

# Scripts run by other virtual environments (tritonclient's), not by this one.
collect_ignore = ["external"]

# JAX warns when a test asks a dtype it truncates; the assertions say what matters.
warnings.filterwarnings("ignore", category=UserWarning, module="jax")


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One real jaxinit-server process for the session, on free loopback ports."""
    with running_server() as srv:
        yield srv
        code = srv.stop()
        assert code == 0, "".join(srv.output)


@pytest.fixture(params=["grpc", "http"])
def url(request: pytest.FixtureRequest, server: ServerProcess) -> str:
    """The server's URL, once per transport."""
    return server.grpc_url if request.param == "grpc" else server.http_url
