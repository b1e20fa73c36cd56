"""The provenance record both sides share: read from JSON or protobuf form (a newer
server's extra fields ignored) and written back as plain data."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jaxinit.protocol.provenance import Provenance

FULL = Provenance(
    jaxinit_version="0.3.0",
    jax_version="0.10.0",
    jaxlib_version="0.10.0",
    backend="cpu",
    device_kind="cpu",
    key_impl="threefry2x32",
    key_data=(0, 42),
    threefry_partitionable=True,
    enable_x64=False,
    canonical_request='{"initializer":"normal"}',
    request_digest="ab" * 32,
)


def test_plain_data_round_trips_through_json() -> None:
    plain = FULL.as_dict()
    assert plain["key_data"] == [0, 42]
    assert set(plain) == {f.name for f in dataclasses.fields(Provenance)}
    assert Provenance.from_mapping(json.loads(json.dumps(plain))) == FULL
    assert plain == dataclasses.asdict(FULL) | {"key_data": [0, 42]}


def test_a_newer_servers_fields_are_ignored_and_missing_ones_default() -> None:
    read = Provenance.from_mapping({"jax_version": "0.11.0", "attestation": "signed", "key_data": ["1", 2]})
    assert read == Provenance(jax_version="0.11.0", key_data=(1, 2))
    assert Provenance.from_mapping({}) == Provenance()


def test_key_data_becomes_a_tuple_of_ints_from_any_sequence() -> None:
    class Repeated(list):  # what a protobuf repeated field reads as
        pass

    read = Provenance.from_mapping({"key_data": Repeated([3, 4])})
    assert read.key_data == (3, 4) and all(type(w) is int for w in read.key_data)
    hash(read)  # frozen and hashable: a key of the client's caches


def test_it_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        FULL.jax_version = "x"  # type: ignore[misc]
