"""Every install line resolves against the public index alone, as on a newcomer's machine.

The lines are read where they live (``make -n`` prints the Makefile's, the Dockerfile's
``RUN pip install``, the README's ``pip install`` lines), so none is copied here. Each is
resolved by pip with every local setting ignored (no configuration file, no find-links or
extra index, no ``PIP_*`` variable), dry-run: a pin of a version only a local wheel folder
has (``torch==2.13.0+cpu`` once) fails here, and the client must come from the checkout,
never from the index (the name jaxinit is not ours there)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from helpers import ROOT, tracked_copy

pytestmark = pytest.mark.release

OURS = {"jaxinit", "jaxinit-server"}
# The test stack: none of it belongs in what `make serve` installs.
TEST_ONLY = {
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "schemathesis",
    "flax",
    "torch",
    "mypy",
    "ruff",
    "grpcio-tools",
    "trustme",
    "kubernetes-validate",
    "psutil",
    "safetensors",
}
MAKE_TARGETS = ("setup-serve", "setup", "setup-lint", "setup-release")


def public_index_env() -> dict[str, str]:
    """The environment with pip's local configuration gone: no config file, no PIP_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _pip_args(command: str) -> list[str]:
    """The arguments after ``pip install`` in a shell command line, less --quiet."""
    words = shlex.split(command, comments=True)
    at = next(i for i in range(len(words) - 1) if words[i].endswith("pip") or words[i : i + 2] == ["pip", "install"])
    args = words[words.index("install", at) + 1 :]
    return [a for a in args if a not in ("--quiet", "-q")]


def makefile_lines(target: str) -> list[list[str]]:
    """The pip install lines ``make <target>`` runs in a fresh venv (pip's own upgrade aside)."""
    out = subprocess.run(
        ["make", "-n", "-B", "VENV=/nonexistent/venv", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [_pip_args(line) for line in out.splitlines() if " -m pip install " in line and "--upgrade pip" not in line]


def dockerfile_lines() -> list[list[str]]:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    runs = [line.split("RUN", 1)[1] for line in text.splitlines() if line.startswith("RUN")]
    return [_pip_args(run) for run in runs if "pip install" in run]


def readme_lines() -> list[list[str]]:
    """The README's ``pip install`` lines (in its shell blocks)."""
    text = (ROOT / "README.md").read_text()
    lines = re.findall(r"^pip install .*$", text, flags=re.MULTILINE)
    assert lines, "the README lists no install line"
    return [_pip_args(line) for line in lines]


def install_lines() -> list[tuple[str, list[str]]]:
    lines = [(f"make {t}", args) for t in MAKE_TARGETS for args in makefile_lines(t)]
    lines += [("deploy/Dockerfile", args) for args in dockerfile_lines()]
    lines += [("README", args) for args in readme_lines()]
    return lines


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tracked_copy(tmp_path_factory.mktemp("resolve") / "checkout")


def resolve(checkout: pathlib.Path, args: list[str], report: pathlib.Path) -> dict[str, dict[str, Any]]:
    """What pip would install for ``args`` from ``checkout``, nothing installed and nothing local
    configured: name -> the report's entry."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    result = subprocess.run(
        [*command, "--report", str(report), *args],
        cwd=checkout,
        env=public_index_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"pip install {shlex.join(args)}:\n{result.stderr[-3000:]}"
    entries = json.loads(report.read_text())["install"]
    return {canonicalize_name(e["metadata"]["name"]): e for e in entries}


def readme_made_files() -> dict[str, str]:
    """The README's ``sed ... > FILE`` lines by the file they make (a constraints file an
    install line then reads, e.g. the one that pins an older JAX)."""
    text = (ROOT / "README.md").read_text()
    return {m.group(2): m.group(1) for m in re.finditer(r"^(sed [^\n>]*> (\S+))$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize(("where", "args"), install_lines(), ids=lambda v: v if isinstance(v, str) else shlex.join(v))
def test_every_install_line_resolves_from_the_public_index_alone(
    checkout: pathlib.Path, tmp_path: pathlib.Path, where: str, args: list[str]
) -> None:
    made = readme_made_files()
    for i, arg in enumerate(args[:-1]):
        if arg == "-c" and args[i + 1] in made:  # made by the README's line before it, as a reader would
            subprocess.run(made[args[i + 1]], shell=True, cwd=checkout, check=True, timeout=60)
    found = resolve(checkout, args, tmp_path / "report.json")
    for name, entry in found.items():
        url = entry["download_info"]["url"]
        version = entry["metadata"]["version"]
        if name in OURS:  # from the checkout, never from the index
            assert url.startswith("file://") and pathlib.Path(url[7:]).resolve().is_relative_to(checkout), (name, url)
            assert "dir_info" in entry["download_info"], entry["download_info"]
        else:
            assert url.startswith("https://"), (where, name, url)
            assert "+" not in version, (where, name, version)  # a local version label: a local build
    assert "jaxinit" in found, found.keys()
    if "./server" in " ".join(args):
        assert "jaxinit-server" in found
    if where == "make setup-serve":
        assert not TEST_ONLY & set(found), sorted(TEST_ONLY & set(found))
    if where in ("make setup", "make setup-lint"):
        assert "pytest" in found and "torch" not in found  # torch is the release tier's
    if where == "make setup-release":
        assert found["torch"]["metadata"]["version"] == "2.13.0"


def test_the_makefile_has_the_lines_this_test_reads() -> None:
    lines = {t: makefile_lines(t) for t in MAKE_TARGETS}
    assert all(len(found) == 1 for found in lines.values()), lines
    serve = lines["setup-serve"][0]
    assert "-c" in serve and "constraints.txt" in serve and serve[-4:] == ["-e", ".", "-e", "./server"], serve
