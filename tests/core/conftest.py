"""tests/core: the core in this process against local JAX (see tests/in_core.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from jaxinit_server.core import Limits, Service


@pytest.fixture(scope="session")
def service() -> Iterator[Service]:
    """The core with production's defaults but no result cache (every request is made) and
    one whole-tensor worker process for the session."""
    service = Service(
        Limits(max_tensor_bytes=2**26),
        whole_workers=1,
        cache_bytes=0,
        # The tests' compilation cache (tests/conftest.py): this process's JAX and the worker.
        compilation_cache_dir=os.environ["JAXINIT_COMPILATION_CACHE_DIR"],
    )
    service.ready = True  # warming up is the process's part
    try:
        yield service
    finally:
        service.close()
