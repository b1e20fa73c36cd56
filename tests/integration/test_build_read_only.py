"""Both distributions build from a read-only copy of the checkout and leave it as it was:
no ``build/``, no ``*.egg-info`` (setuptools wrote both into the tree that ``pip install .``
was run in, and failed where it could not)."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator

import pytest

import jaxinit
from helpers import tracked_copy

pytestmark = pytest.mark.release


def snapshot(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    found = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_size if path.is_file() else 0, info.st_mtime_ns)
    return found


def _set_writable(root: pathlib.Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


@pytest.fixture
def read_only_checkout(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    checkout = tracked_copy(tmp_path / "checkout")
    _set_writable(checkout, False)  # read-only for a user; root writes regardless, hence the snapshot
    try:
        yield checkout
    finally:
        _set_writable(checkout, True)


def test_both_wheels_build_from_a_read_only_checkout_and_write_nothing_there(
    read_only_checkout: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    before = snapshot(read_only_checkout)
    out = tmp_path / "wheels"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out)]
    result = subprocess.run(
        [*command, str(read_only_checkout), str(read_only_checkout / "server")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    after = snapshot(read_only_checkout)
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"
    wheels = {path.name.split("-")[0]: path for path in out.glob("*.whl")}
    assert set(wheels) == {"jaxinit", "jaxinit_server"}, sorted(wheels)
    sources = {"jaxinit": read_only_checkout / "client", "jaxinit_server": read_only_checkout / "server"}
    for name, path in wheels.items():
        with zipfile.ZipFile(path) as wheel:
            entries = set(wheel.namelist())
        tops = {entry.split("/")[0] for entry in entries}
        assert tops == {name, f"{name}-{jaxinit.__version__}.dist-info"}, tops
        # Every module of the package, py.typed and the stubs' .pyi included.
        source = {str(f.relative_to(sources[name])) for f in (sources[name] / name).rglob("*") if f.is_file()}
        assert source and source <= entries, sorted(source - entries)
