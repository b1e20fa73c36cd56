"""jaxinit.protocol.model.files: the canonical form and digest that name a model answer's
bytes, and a model file's safetensors metadata, as exact strings. JAX-free."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from jaxinit.protocol.keys import Key
from jaxinit.protocol.model.files import file_metadata, model_canonical

IDENTITY = {
    "jaxinit_version": "0.3.0",
    "jax_version": "0.10.0",
    "jaxlib_version": "0.10.0",
    "backend": "cpu",
    "device_kind": "cpu",
}


def test_the_canonical_form_is_compact_json_and_its_digest_is_sha256() -> None:
    canonical, digest = model_canonical("flax", [])
    assert canonical == '{"layout":"flax","tensors":[]}'
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    # names outside ASCII are escaped: the canonical bytes never depend on an encoding
    canonical, digest = model_canonical("flax", [("ü.w", "ab")])
    assert canonical == '{"layout":"flax","tensors":[["\\u00fc.w","ab"]]}'
    assert canonical.isascii() and digest == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_digest_depends_on_the_layout_names_digests_and_order_only() -> None:
    tensors = [("a.kernel", "1" * 64), ("a.bias", "2" * 64)]
    digest = model_canonical("flax", tensors)[1]
    assert model_canonical("flax", [tuple(t) for t in tensors])[1] == digest
    assert model_canonical("flax", [list(t) for t in tensors])[1] == digest
    assert model_canonical("torch", tensors)[1] != digest
    assert model_canonical("flax", tensors[::-1])[1] != digest
    assert model_canonical("flax", [("a.kernel", "1" * 64), ("a.bias", "3" * 64)])[1] != digest
    assert model_canonical("flax", [("a.kernel", "1" * 64), ("a.bia", "2" * 64)])[1] != digest
    # the separators leave no room for two lists to read the same
    assert model_canonical("flax", [("a", "b,c")])[1] != model_canonical("flax", [("a", "b"), ("c", "")])[1]


def metadata(**changes: Any) -> dict[str, str]:
    arguments: dict[str, Any] = {
        "mode": "linen",
        "layout": "flax",
        "root": Key(seed=0),
        "threefry_partitionable": True,
        "enable_x64": False,
        "model_digest": "d" * 64,
        **changes,
    }
    identity = arguments.pop("identity", IDENTITY)
    return file_metadata(identity, **arguments)


def test_the_metadata_says_what_produced_the_file() -> None:
    assert metadata() == {
        "format": "flax",
        "jaxinit_version": "0.3.0",
        "jax_version": "0.10.0",
        "jaxlib_version": "0.10.0",
        "backend": "cpu",
        "device_kind": "cpu",
        "mode": "linen",
        "layout": "flax",
        "root_key": '{"seed":0,"impl":"threefry2x32"}',
        "threefry_partitionable": "true",
        "enable_x64": "false",
        "jit": "false",
        "model_digest": "d" * 64,
    }


def test_the_torch_layout_is_format_pt_as_hugging_face_tools_expect() -> None:
    got = metadata(layout="torch", mode="nnx", jit=True, threefry_partitionable=False, enable_x64=True)
    assert (got["format"], got["layout"], got["mode"]) == ("pt", "torch", "nnx")
    assert (got["jit"], got["threefry_partitionable"], got["enable_x64"]) == ("true", "false", "true")


@pytest.mark.parametrize(
    ("root", "text"),
    [
        (Key(data=(1, 2)), '{"data":[1,2],"impl":"threefry2x32"}'),
        (
            Key(seed=2**40, impl="rbg", steps=(("split", 4, 1), ("stack", 2), ("fold_in", 3))),
            '{"seed":1099511627776,"impl":"rbg","derive":[{"split":[4,1]},{"stack":2},{"fold_in":3}]}',
        ),
    ],
)
def test_the_root_key_is_its_compact_json(root: Key, text: str) -> None:
    assert metadata(root=root)["root_key"] == text
    assert json.loads(text) == root.to_json()


def test_every_value_is_a_string_and_only_the_identitys_known_fields_are_copied() -> None:
    identity = {"jaxinit_version": "0.3.0", "jax_version": (0, 10), "backend": None, "token": "secret"}
    got = metadata(identity=identity)
    assert all(isinstance(v, str) for v in got.values())
    assert (got["jax_version"], got["backend"], got["jaxlib_version"], got["device_kind"]) == (
        "(0, 10)",
        "None",
        "",
        "",
    )
    assert "token" not in got and "secret" not in got.values()
