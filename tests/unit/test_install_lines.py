"""Every documented install line takes the client from the checkout, and the Python floors
are the true ones, said where a reader looks. (The release tier resolves the lines against
the public index: tests/integration/test_setup_resolution.py.)

The name ``jaxinit`` is not ours on the public index: a line that lets pip look it up there
(``pip install ./server`` alone, ``pip install 'jaxinit[grpc]'``) could install someone
else's package."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from helpers import ROOT

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")), "deploy/Dockerfile"]
OPTIONS_WITH_VALUES = {"-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-w", "--index-url", "-i"}


def documented_lines() -> list[tuple[str, str]]:
    """(where, the words after ``pip install``) of each install line in the docs and the Dockerfile."""
    found = []
    for name in DOCUMENTS:
        for match in re.finditer(r"pip install ([^`\n#]*)", (ROOT / name).read_text()):
            found.append((name, match.group(1).strip()))
    return found


def makefile_lines() -> list[tuple[str, str]]:
    out = subprocess.run(
        ["make", "-n", "-B", "VENV=/nonexistent/venv", "setup-serve", "setup", "setup-lint", "setup-release"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    lines = [line.split(" -m pip install ", 1)[1] for line in out.splitlines() if " -m pip install " in line]
    return [("Makefile", line) for line in lines if "--upgrade pip" not in line]


def requirements(words: str) -> list[str]:
    """What a line asks pip to install: its requirements and paths (``-e`` ones included)."""
    tokens = shlex.split(words)
    asked, skip = [], False
    for i, token in enumerate(tokens):
        if skip:
            skip = False
            if tokens[i - 1] in ("-e", "--editable"):
                asked.append(token)
            continue
        if token in OPTIONS_WITH_VALUES:
            skip = True
        elif not token.startswith("-"):
            asked.append(token)
    return asked


LINES = documented_lines() + makefile_lines()


def test_the_lines_are_found() -> None:
    assert len([w for w, _ in LINES if w == "README.md"]) >= 4 and len([w for w, _ in LINES if w == "Makefile"]) == 4


@pytest.mark.parametrize(("where", "words"), LINES, ids=[f"{w}: {line}" for w, line in LINES])
def test_the_client_comes_from_the_checkout(where: str, words: str) -> None:
    asked = requirements(words)
    by_name = [a for a in asked if re.match(r"jaxinit(-server)?\b", a)]
    assert not by_name, f"{where}: `pip install {words}` looks {by_name} up on the index; install from the checkout"
    checkout_client = [a for a in asked if a == "." or a.startswith(".[")]
    if any(a.rstrip("/") == "./server" or a.startswith("./server[") for a in asked):
        assert checkout_client, f"{where}: `pip install {words}` installs the server without the checkout's client"


def _floor(pyproject: str) -> str:
    found = re.search(r'^requires-python = "(.*)"$', (ROOT / pyproject).read_text(), re.MULTILINE)
    assert found, pyproject
    return found.group(1)


def test_the_python_floors_are_the_true_ones_and_the_readme_says_both() -> None:
    assert _floor("server/pyproject.toml") == ">=3.11"  # JAX 0.10 needs 3.11
    assert _floor("pyproject.toml") == ">=3.10"  # the client alone runs on 3.10 (the release tier's venv test)
    readme = (ROOT / "README.md").read_text()
    assert "Python ≥ 3.11" in readme and "Python >= 3.10" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert "sys.version_info < (3, 11)" in makefile  # one line before pip would print pages
