"""tests/unit/core: fixtures shared by its modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jaxinit_server.core import chunked


@pytest.fixture
def chunking_as_found() -> Iterator[None]:
    """The chunked families' proven/disabled state as the test found it, restored after it
    (for tests that prove, disable or require proof: warm-up, start-up)."""
    disabled = chunked.disabled()
    yield
    chunked.proven()
    chunked._disabled.clear()
    chunked._disabled.update(disabled)
