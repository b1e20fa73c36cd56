from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ["grpc", "fastapi", "starlette", "uvicorn", "httpx", "pydantic_settings", "google.protobuf"]


def test_core_imports_no_transport() -> None:
    code = (
        "import sys, jaxinit_server.core, jaxinit_server.core.engine;"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules];"
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_client_imports_without_jax_or_transports() -> None:
    code = (
        "import sys; sys.modules['jax'] = None; import jaxinit;"
        "c = jaxinit.Client('http://127.0.0.1:9'); c.close();"
        "bad = [m for m in ('jaxlib', 'grpc', 'fastapi') if sys.modules.get(m)];"
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
