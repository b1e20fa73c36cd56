"""The server under every supported JAX version (deploy/jax_versions.py): for each one, a
venv with that JAX (``.cache/jax-venvs/<version>``, built once, from the public index, by
the pool's own install line) runs the core in process against that same JAX, byte for
byte: every initializer x a dtype of each class x both PRNG modes, every key
implementation the version has (a refusal naming the version for those it lacks), derived
and stacked keys, ranges, several chunks, jit; and the warm-up self-check proves every
chunked family there (tests/external/jax_version_matrix.py)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "deploy"))
import jax_versions  # noqa: E402

pytestmark = pytest.mark.release


@pytest.mark.parametrize("version", jax_versions.SUPPORTED)
def test_the_core_is_exact_under_each_supported_jax(version: str, tmp_path: pathlib.Path) -> None:
    python = jax_versions.python_for(version)
    report_path = tmp_path / "report.json"
    cache = ROOT / ".cache" / f"jax-compilation-{version}"
    result = subprocess.run(
        [python, str(ROOT / "tests" / "external" / "jax_version_matrix.py"), str(report_path), str(cache)],
        capture_output=True,
        text=True,
        timeout=900,
        env=jax_versions.environment(),
        cwd=tmp_path,
    )
    assert report_path.exists(), result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["jax"] == version
    assert report["failures"] == [], "\n".join(report["failures"][:20])
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["cases"] > 300
    # Chunking is proven on every supported version: nothing runs whole for want of proof.
    assert report["self_check_disabled"] == {}
    # The partitionable flip: off by default before 0.5.0, on from it (the server follows).
    assert report["default_partitionable"] is (tuple(map(int, version.split(".")[:2])) >= (0, 5))
    # What a version lacks is refused by name, with the version.
    assert len(report["refused"]) >= len(report["key_impls_lacking"])
