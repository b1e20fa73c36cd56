"""The client's pins: ``jax_version="local"`` is the JAX beside the client (refused clearly
when there is none), pins travel as fields and as the routing header, and ``like=`` reads
an earlier answer's provenance or a model's metadata."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

import jaxinit
from jaxinit import _client, _http
from jaxinit._types import ModelRequest, Request
from jaxinit.protocol import wire
from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.keys import Key


def test_local_is_the_installed_jax_and_refused_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _client._version_pin("local") == importlib.metadata.version("jax")
    assert _client._version_pin("0.4.38") == "0.4.38" and _client._version_pin(None) is None

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(InvalidArgument, match="installed beside this client"):
        jaxinit.Client("http://127.0.0.1:9", jax_version="local")


def test_pins_go_in_the_body_the_get_form_and_the_header() -> None:
    request = Request("lecun_normal", 0, (2, 2), jax_version="0.10.2", backend="cpu")
    post = _http.tensor_call(request, cacheable=False)
    assert post["json"]["jax_version"] == "0.10.2" and post["json"]["backend"] == "cpu"
    assert post["headers"][wire.JAX_VERSION_HEADER] == "0.10.2"
    get = _http.tensor_call(request, cacheable=True)
    assert "jax_version=0.10.2" in get["url"] and "backend=cpu" in get["url"]
    assert wire.JAX_VERSION_HEADER not in _http.tensor_call(Request("zeros", None, (2,)), cacheable=False)["headers"]
    model = ModelRequest({"type": "Dense", "in_features": 2, "features": 3}, Key(seed=0), jax_version="0.10")
    assert model.to_json()["jax_version"] == "0.10"
    assert _http.model_plan_call(model)["headers"][wire.JAX_VERSION_HEADER] == "0.10"
    with pytest.raises(InvalidArgument):
        Request("zeros", None, (2,), jax_version="")


def test_like_reads_a_provenance_and_a_models_metadata() -> None:
    canonical = {"key": {"seed": 4, "impl": "rbg", "fold_in": [2], "derive": [{"split": [4, 1]}]}, "jit": True}
    provenance = jaxinit.Provenance(
        jax_version="0.10.2", backend="cpu", threefry_partitionable=False, canonical_request=json.dumps(canonical)
    )
    settings = _client._like(provenance)
    assert settings["key"] == Key(seed=4, impl="rbg", fold_in=(2,), derive=(("split", 4, 1),))
    assert (settings["jax_version"], settings["backend"], settings["jit"]) == ("0.10.2", "cpu", True)
    assert settings["threefry_partitionable"] is False
    metadata = {"root_key": '{"seed":3,"impl":"threefry2x32"}', "jax_version": "0.10.2", "enable_x64": "true"}
    settings = _client._like(metadata)
    assert settings["key"] == Key(seed=3) and settings["enable_x64"] is True and settings["jit"] is False
    with pytest.raises(InvalidArgument, match="not both"):
        _client._one_key(3, Key(seed=4))
    with pytest.raises(InvalidArgument, match="like= takes"):
        _client._like("0.10.2")
