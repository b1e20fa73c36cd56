"""The JAX versions a jaxinit deployment serves, and one virtual environment per version.

Each version is served by its own pool of servers (docker-compose.yml, deploy/k8s,
deploy/harness.py); a server answers with its own JAX's bytes. The install line of a pool
is the default one with JAX pinned: ``constraints.txt`` with its ``jax`` and ``jaxlib``
lines set to the version (:func:`constraints_for`; deploy/Dockerfile's ``JAX_VERSION``
does the same), so every other package is the version CI tests.

    python deploy/jax_versions.py            # build (or reuse) every version's venv, print them
    python deploy/jax_versions.py 0.4.38     # one

The venvs live in ``.cache/jax-venvs/<version>`` of the checkout, built once and reused
while what they were built from is the same (a stamp of the constraints, the two
pyproject files and the Python). They hold the checkout's distributions as installed then;
run the current code with ``PYTHONPATH=client:server`` (as :func:`environment` does).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = [
    "CACHE",
    "DEFAULT",
    "INDEX",
    "SUPPORTED",
    "constraints_for",
    "environment",
    "pool_name",
    "python_for",
    "venv_python",
]

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "jax-venvs"
# Oldest first. 0.4.38: the last release before 0.5.0 turned jax_threefry_partitionable on
# (every value changed); 0.6.2 and 0.8.3: the last of their minor series; 0.10.2: the
# default install's (constraints.txt).
SUPPORTED = ("0.4.38", "0.6.2", "0.8.3", "0.10.2")
DEFAULT = "0.10.2"
INDEX = "https://pypi.org/simple"  # the public index only: no local mirrors or wheel folders


def pool_name(version: str) -> str:
    """The pool's name in the compose file, the manifests and nginx: jax-0-4-38."""
    return "jax-" + version.replace(".", "-")


def constraints_for(version: str, text: str | None = None) -> str:
    """constraints.txt with jax and jaxlib pinned to ``version``; nothing else changes.

    Raises ValueError when the file has no jax or jaxlib line to set.
    """
    text = (ROOT / "constraints.txt").read_text() if text is None else text
    for name in ("jax", "jaxlib"):
        text, n = re.subn(rf"(?m)^{name}==\S+$", f"{name}=={version}", text)
        if n != 1:
            raise ValueError(f"constraints.txt has {n} `{name}==` lines, expected 1")
    return text


def _stamp(version: str) -> str:
    digest = hashlib.sha256()
    for part in (
        constraints_for(version),
        (ROOT / "pyproject.toml").read_text(),
        (ROOT / "server" / "pyproject.toml").read_text(),
        sys.version,
        INDEX,
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def venv_python(version: str) -> Path:
    return CACHE / version / "bin" / "python"


def python_for(version: str, *, timeout: float = 900) -> str:
    """A Python whose JAX is ``version``: this one if it has it, else the version's venv,
    built first if missing or stale (blocking; minutes: the install downloads jaxlib).

    Raises subprocess.CalledProcessError or TimeoutExpired when the install fails.
    """
    try:
        import jax

        if jax.__version__ == version:
            return sys.executable
    except ImportError:
        pass
    where = CACHE / version
    stamp = where / "jaxinit-stamp"
    wanted = _stamp(version)
    if stamp.is_file() and stamp.read_text() == wanted and venv_python(version).exists():
        return str(venv_python(version))
    shutil.rmtree(where, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    constraints = CACHE / f"constraints-{version}.txt"
    constraints.write_text(constraints_for(version))
    # The public index only: no configuration file, mirror or wheel folder of this machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    command = [
        str(venv_python(version)),
        *("-m", "pip", "install", "--quiet", "--index-url", INDEX),
        *("--constraint", str(constraints)),
        *(str(ROOT), str(ROOT / "server")),
    ]
    subprocess.run(command, check=True, timeout=timeout, env=env, cwd=CACHE)
    stamp.write_text(wanted)
    return str(venv_python(version))


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the checkout's code first on the
    path, for a process run by a version's venv."""
    env = dict(os.environ if base is None else base)
    here = [str(ROOT / "client"), str(ROOT / "server")]
    env["PYTHONPATH"] = os.pathsep.join(here + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def main(argv: list[str]) -> int:
    for version in argv or SUPPORTED:
        if version not in SUPPORTED:
            print(f"{version} is not a supported JAX version ({', '.join(SUPPORTED)})", file=sys.stderr)
            return 2
        print(f"jax {version}: {python_for(version)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
