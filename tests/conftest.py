from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

# Set before JAX is imported. Server processes the tests start (running_server and every
# other way), tests/core's service and this process: one JAX compilation cache for all of
# them, per user as the server's own (every checkout and worktree of the user shares what
# any compiled; entries are keyed by the program and JAX's version, so a change of code
# only adds entries: a whole run's programs are about 50 MB); and no warm-up (each flag or
# env a test passes wins).
_USER_CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "jaxinit"
os.environ.setdefault("JAXINIT_COMPILATION_CACHE_DIR", str(_USER_CACHE / "jax-tests"))
os.environ.setdefault("JAXINIT_WARM_UP", "false")

from in_process import InProcessServer, in_process_server  # noqa: E402

from jaxinit_server.core.startup import use_compilation_cache  # noqa: E402

use_compilation_cache(os.environ["JAXINIT_COMPILATION_CACHE_DIR"])  # local JAX's references here too

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Scripts run by other virtual environments (tritonclient's), not by this one.
collect_ignore = ["external"]

# JAX warns when a test asks a dtype it truncates; the assertions say what matters.
warnings.filterwarnings("ignore", category=UserWarning, module="jax")


# Counted: each starts JAX (seconds), so the default tiers start few (docs/testing.md).
# make test runs the tests in several pytest-xdist processes: each appends the servers it
# starts to one file, which the controlling process (or the only one) reads at the end.
_SERVER_LOG = "JAXINIT_TESTS_SERVER_LOG"
_CONTROLLER = "PYTEST_XDIST_WORKER" not in os.environ
if _CONTROLLER:
    _fd, _path = tempfile.mkstemp(prefix="jaxinit-test-servers-", suffix=".log")
    os.close(_fd)
    os.environ[_SERVER_LOG] = _path  # (inherited by the xdist workers, started after this)
_popen_init = subprocess.Popen.__init__


def _counting_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
    words = [str(a) for a in args] if isinstance(args, (list, tuple)) else [str(args)]
    if "jaxinit_server.main" in words or any(w.endswith("jaxinit-server") for w in words):
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(os.environ[_SERVER_LOG], "a") as log:  # one short line: appends do not interleave
            log.write(test + "\n")
    _popen_init(self, args, *rest, **kwargs)


subprocess.Popen.__init__ = _counting_init  # type: ignore[method-assign]


def _servers_started() -> list[str]:
    with contextlib.suppress(OSError), open(os.environ[_SERVER_LOG]) as log:
        return log.read().splitlines()
    return []


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _CONTROLLER:
        return
    reporter, started = terminalreporter, _servers_started()
    reporter.write_sep("-", f"jaxinit-server processes started by the tests: {len(started)}")
    for test in started:
        reporter.write_line(f"  {test}")
    most = os.environ.get("JAXINIT_MAX_SERVER_PROCESSES")
    if most and len(started) > int(most):
        reporter.write_line(
            f"more than JAXINIT_MAX_SERVER_PROCESSES={most}: use an in-process server (tests/in_process.py)"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _CONTROLLER:
        return
    most = os.environ.get("JAXINIT_MAX_SERVER_PROCESSES")
    if most and len(_servers_started()) > int(most) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    if _CONTROLLER:
        with contextlib.suppress(OSError):
            os.unlink(os.environ[_SERVER_LOG])


@pytest.fixture(scope="session")
def server() -> Iterator[InProcessServer]:
    """One jaxinit-server for the session, in this process, on free loopback ports."""
    with in_process_server() as srv:
        yield srv


@pytest.fixture(params=["grpc", "http"])
def url(request: pytest.FixtureRequest, server: InProcessServer) -> str:
    """The server's URL, once per transport."""
    return server.grpc_url if request.param == "grpc" else server.http_url
