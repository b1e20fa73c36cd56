"""The fuzzers of test_fuzz.py at the release tier's budget: the default tiers run them short
(JAXINIT_FUZZ_EXAMPLES' default), this runs every one of them again with more examples, in a
pytest of its own (the budget is read when the module is imported)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.release

RELEASE_EXAMPLES = os.environ.get("JAXINIT_FUZZ_EXAMPLES", "40")  # test_fuzz.py's RELEASE_EXAMPLES


def test_the_fuzzers_at_the_release_budget() -> None:
    env = {**os.environ, "JAXINIT_FUZZ_EXAMPLES": RELEASE_EXAMPLES}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not release"]
    result = subprocess.run(
        [*command, "tests/integration/test_fuzz.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout, result.stdout[-2000:]
