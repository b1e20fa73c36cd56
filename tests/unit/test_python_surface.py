"""The Python client's rough edges: a tensor's repr names it; an optional dependency that is
missing is named with what to install."""

from __future__ import annotations

import builtins
import json
from typing import Any

import numpy as np
import pytest

import jaxinit
from jaxinit import _client
from jaxinit.protocol.provenance import Provenance


def _tensor(request_id: str) -> jaxinit.Tensor:
    canonical = json.dumps({"initializer": "lecun_normal", "shape": [3, 2]})
    provenance = Provenance(jax_version="0.10.2", backend="cpu", canonical_request=canonical, request_digest="ab" * 32)
    return jaxinit.Tensor(np.zeros((3, 2), np.float32), provenance, request_id, 0, (3, 2))


def test_repr_names_the_initializer_not_a_transport_index() -> None:
    text = repr(_tensor("0"))
    assert text.startswith("<Tensor lecun_normal float32[3, 2]") and "'0'" not in text
    assert "lecun_normal 'Dense_0.kernel' float32" in repr(_tensor("Dense_0.kernel"))


def _without(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real_import = builtins.__import__

    def missing(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == module or name.startswith(module + "."):
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", missing)


def test_to_torch_without_torch_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    params = _client.ModelParams({"w": np.zeros(2, np.float32)})
    _without(monkeypatch, "torch")
    with pytest.raises(ImportError, match=r"to_torch\(\) needs PyTorch.*pip install torch"):
        params.to_torch()


def test_a_progress_bar_without_tqdm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "tqdm")
    with (
        jaxinit.Client("http://127.0.0.1:9") as client,
        pytest.raises(ImportError, match=r"pip install tqdm \(the client's \[progress\] extra\)"),
        client._showing_progress(True, "normal"),
    ):
        pass
