"""Names on the wire: every header and metadata key is a valid lowercase HTTP field name
and gRPC metadata key, each says one thing, and each is in the module's ``__all__``."""

from __future__ import annotations

import re

import pytest

from jaxinit.protocol import wire

CONSTANTS = {name: getattr(wire, name) for name in dir(wire) if name.isupper()}
KEYS = {name: value for name, value in CONSTANTS.items() if name.endswith(("_HEADER", "_KEY"))}
MEDIA = {name: value for name, value in CONSTANTS.items() if name not in KEYS}


def test_every_header_and_key_is_a_lowercase_token() -> None:
    """gRPC metadata keys: lowercase letters, digits, '-', '_' and '.'; and ours are never
    binary ('-bin') or reserved ('grpc-')."""
    assert KEYS
    for name, value in KEYS.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", value), name
        assert not value.endswith("-bin") and not value.startswith("grpc-"), name


def test_media_types_are_type_slash_subtype() -> None:
    assert set(MEDIA) == {"OCTET", "NPY", "JSON", "DIGESTED", "SAFETENSORS", "NPZ", "TENSORS"}
    for name, value in MEDIA.items():
        assert re.fullmatch(r"[a-z]+/[a-z0-9.+-]+", value), name


def test_each_name_says_one_thing() -> None:
    values = list(CONSTANTS.values())
    assert len(values) == len(set(values))


def test_the_jaxinit_headers_share_a_prefix() -> None:
    shared = {"REQUEST_ID_HEADER", "RETRY_AFTER_KEY", "ERROR_TYPE_KEY"}  # common names, or gRPC trailers
    for name, value in KEYS.items():
        if name not in shared:
            assert value.startswith("x-jaxinit-"), name


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_every_name_is_exported(name: str) -> None:
    assert name in wire.__all__
