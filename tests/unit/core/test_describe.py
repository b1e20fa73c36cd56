"""jaxinit_server.core.describe: the server as plain data. describe() is the registry, the
dtypes and key implementations this JAX has of what the protocol names, and the server's
identity; state() is readiness with the pools, caches and caps, read from its host. Both
with a fixed identity and a stand-in host: no Service, no JAX work."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPE_NAMES
from jaxinit.protocol.keys import KEY_IMPLS
from jaxinit_server.core import _jax_compat, chunked
from jaxinit_server.core.describe import describe, state
from jaxinit_server.core.provenance import ServerIdentity
from jaxinit_server.core.request import PrngDefaults

IDENTITY = ServerIdentity(
    jaxinit_version="9.9.9",
    jax_version="0.0.1",
    jaxlib_version="0.0.2",
    backend="cpu",
    device_kind="toaster",
    defaults=PrngDefaults(threefry_partitionable=True, enable_x64=False),
)


def test_the_registry_in_the_catalogs_order_every_field_plain_data() -> None:
    described = describe(IDENTITY, None)
    assert [entry["name"] for entry in described["initializers"]] == list(CATALOG)
    by_name = {entry["name"]: entry for entry in described["initializers"]}
    assert by_name["zeros"] == {
        "name": "zeros",
        "kind": "initializer",
        "source": "jax.nn.initializers",
        "summary": "arrays of zeros",
        "uses_key": False,
        "arguments": [],
    }
    scaling = by_name["variance_scaling"]
    assert (scaling["kind"], scaling["uses_key"]) == ("factory", True)
    assert [(a["name"], a["type"], a["required"], a["default_json"], a["choices"]) for a in scaling["arguments"]] == [
        ("scale", "float", True, "", []),
        ("mode", "choice", True, "", ["fan_in", "fan_out", "fan_avg", "fan_geo_avg"]),
        ("distribution", "choice", True, "", ["truncated_normal", "normal", "uniform"]),
        ("in_axis", "axes", False, "-2", []),
        ("out_axis", "axes", False, "-1", []),
        ("batch_axis", "axes", False, "[]", []),  # a tuple default as JSON's list
        ("dtype", "dtype", False, "null", []),
    ]
    assert scaling["arguments"][1]["doc"] == "which fan the variance is divided by"
    assert json.loads(json.dumps(described)) == described  # plain data all through: lists, not tuples


def test_the_server_is_its_identity_and_prng_defaults() -> None:
    assert describe(IDENTITY, None)["server"] == {
        "jaxinit_version": "9.9.9",
        "jax_version": "0.0.1",
        "jaxlib_version": "0.0.2",
        "backend": "cpu",
        "device_kind": "toaster",
        "threefry_partitionable": True,
        "enable_x64": False,
    }


def test_shared_memory_names_its_directory_only_when_offered() -> None:
    assert describe(IDENTITY, None)["shared_memory"] is None
    regions: Any = SimpleNamespace(directory=Path("/dev/shm/jaxinit-1"))
    assert describe(IDENTITY, regions)["shared_memory"] == {"directory": "/dev/shm/jaxinit-1"}


def test_dtypes_and_key_implementations_are_what_this_jax_has(monkeypatch: pytest.MonkeyPatch) -> None:
    described = describe(IDENTITY, None)
    assert described["dtypes"] == [d for d in DTYPE_NAMES if _jax_compat.unsupported(dtype=d) is None]
    assert described["key_impls"] == [k for k in KEY_IMPLS if k in _jax_compat.KEY_IMPLS]
    # an older JAX lacks some: they are left out, the protocol's order kept
    lacking = {"float8_e3m4", "float8_e8m0fnu"}
    monkeypatch.setattr(_jax_compat, "unsupported", lambda *, dtype: "not here" if dtype in lacking else None)
    monkeypatch.setattr(_jax_compat, "KEY_IMPLS", frozenset({"rbg", "threefry2x32"}))
    older = describe(IDENTITY, None)
    assert older["dtypes"] == [d for d in DTYPE_NAMES if d not in lacking]
    assert older["key_impls"] == ["threefry2x32", "rbg"]


class Whole:
    def state(self) -> dict[str, Any]:
        return {"size": 2, "busy": 1}


class Results:
    def state(self) -> dict[str, Any]:
        return {"entries": 3}


class Regions:
    def state(self) -> dict[str, Any]:
        return {"unclaimed": 1}


def host(**changes: Any) -> Any:
    admission = SimpleNamespace(
        streams=2,
        max_streams=64,
        bytes=1024,
        max_bytes=2**30,
        callers={"a": 1, "b": 2},
        max_caller_streams=16,
        max_caller_bytes=2**28,
        heavy=1,
        max_heavy=4,
    )
    fields = {
        "ready": True,
        "whole": Whole(),
        "stalls": SimpleNamespace(disconnected=5),
        "results": Results(),
        "regions": Regions(),
        "admission": admission,
        "production": SimpleNamespace(heavy_waiting=3, heavy_slots=1),
        **changes,
    }
    return SimpleNamespace(**fields)


def test_state_reads_each_part_of_its_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "_disabled", {"normal": "a chunk differs", "uniform": "a chunk differs"})
    assert state(host()) == {
        "ready": True,
        "whole_tensor_workers": {"size": 2, "busy": 1},
        "chunking": {
            "disabled": {"normal": "a chunk differs", "uniform": "a chunk differs"},
            "disabled_count": 2,
        },
        "stalled_readers_disconnected": 5,
        "results": {"entries": 3},
        "shared_memory": {"unclaimed": 1},
        "admission": {
            "streams": 2,
            "max_streams": 64,
            "bytes": 1024,
            "max_bytes": 2**30,
            "callers": 2,  # how many, never who
            "max_caller_streams": 16,
            "max_caller_bytes": 2**28,
            "heavy": 1,
            "max_heavy": 4,
            "heavy_waiting": 3,
            "heavy_slots": 1,
        },
    }


def test_state_without_a_stall_watch_or_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "_disabled", {})
    got = state(host(ready=False, stalls=None, regions=None))
    assert (got["ready"], got["stalled_readers_disconnected"], got["shared_memory"]) == (False, 0, None)
    assert got["chunking"] == {"disabled": {}, "disabled_count": 0}
    json.dumps(got)
