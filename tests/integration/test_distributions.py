"""Two distributions from one repository: the client (the root pyproject.toml, ``jaxinit``)
holds no server code and no ``jaxinit-server`` script; the server (server/pyproject.toml,
``jaxinit-server``) holds the server and depends on the client at its own version. Each is
built as a wheel from a copy of the tracked files, as pip builds it for a user."""

from __future__ import annotations

import email.parser
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

import jaxinit
from helpers import tracked_copy

# The release tier: wheels built and installed in fresh virtual environments.
pytestmark = pytest.mark.release


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    root = tmp_path_factory.mktemp("dists")
    checkout = tracked_copy(root / "checkout")
    out = root / "wheels"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out)]
    subprocess.run([*command, str(checkout), str(checkout / "server")], check=True, timeout=600, env=env)
    found = {path.name.split("-")[0]: zipfile.ZipFile(path) for path in out.glob("*.whl")}
    assert set(found) == {"jaxinit", "jaxinit_server"}, sorted(found)
    return found


def _metadata(wheel: zipfile.ZipFile) -> tuple[email.message.Message, str]:
    """(METADATA, entry_points.txt) of a wheel."""
    dist_info = next(n.split("/")[0] for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info"))
    metadata = email.parser.Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
    points = f"{dist_info}/entry_points.txt"
    entry_points = wheel.read(points).decode() if points in wheel.namelist() else ""
    return metadata, entry_points


def test_the_client_distribution_has_no_server(wheels: dict[str, zipfile.ZipFile]) -> None:
    client = wheels["jaxinit"]
    tops = {name.split("/")[0] for name in client.namelist()}
    assert tops == {"jaxinit", f"jaxinit-{jaxinit.__version__}.dist-info"}, tops
    assert "jaxinit/v1/jaxinit_pb2.py" in client.namelist() and "jaxinit/py.typed" in client.namelist()
    metadata, entry_points = _metadata(client)
    assert metadata["Version"] == jaxinit.__version__
    assert "jaxinit-server" not in entry_points and "jaxinit = jaxinit.cli:main" in entry_points
    needs = " ".join(metadata.get_all("Requires-Dist") or [])
    for server_only in ("jax<", "jax>", "fastapi", "uvicorn", "pydantic", "prometheus"):
        assert server_only not in needs, needs


def test_the_server_distribution_depends_on_the_client_at_its_version(wheels: dict[str, zipfile.ZipFile]) -> None:
    server = wheels["jaxinit_server"]
    tops = {name.split("/")[0] for name in server.namelist()}
    assert tops == {"jaxinit_server", f"jaxinit_server-{jaxinit.__version__}.dist-info"}, tops
    assert "jaxinit_server/kserve/grpc_predict_v2_pb2.pyi" in server.namelist()
    metadata, entry_points = _metadata(server)
    assert metadata["Name"] == "jaxinit-server" and metadata["Version"] == jaxinit.__version__
    assert "jaxinit-server = jaxinit_server.main:main" in entry_points
    needs = metadata.get_all("Requires-Dist") or []
    assert f"jaxinit[dtypes,grpc]=={jaxinit.__version__}" in needs, needs


def test_a_thin_install_has_no_server_module_or_script(tmp_path: pathlib.Path) -> None:
    """The client alone, installed from the checkout: ``import jaxinit_server`` fails and no
    ``jaxinit-server`` script exists (it used to crash: No module named 'uvicorn')."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    checkout = tracked_copy(tmp_path / "checkout")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, str(checkout)], check=True, timeout=600, env=env)
    assert (venv / "bin" / "jaxinit").exists() and not (venv / "bin" / "jaxinit-server").exists()
    probe = "import importlib.util as u, jaxinit; print(u.find_spec('jaxinit_server'), jaxinit.__file__)"
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert found[0] == "None" and str(venv) in found[1], found
