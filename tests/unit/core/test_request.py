"""Request resolution: every default decided, every value checked before any JAX work, and
one canonical form per request (its digest names the bytes on one server)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pytest

from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.errors import InvalidArgument, JaxinitError, TooLarge, UnknownDtype, UnknownInitializer
from jaxinit.protocol.keys import MAX_STACK, Key
from jaxinit_server.core.request import (
    MAX_KEY_BY_KEY_STEPS,
    GenerateParams,
    Limits,
    PrngDefaults,
    Resolved,
    resolve,
)

DEFAULTS = PrngDefaults(threefry_partitionable=True, enable_x64=False)


def _resolve(name: str = "normal", shape: Any = (4, 5), **fields: Any) -> Resolved:
    limits = fields.pop("limits", Limits())
    defaults = fields.pop("defaults", DEFAULTS)
    if "key" not in fields:
        fields["key"] = Key(seed=0)
    return resolve(GenerateParams(name, shape, **fields), limits, defaults)


def test_the_canonical_form_is_compact_sorted_json_of_every_decided_value() -> None:
    resolved = _resolve("normal", [4, 5], args={"stddev": 2}, key=Key(seed=3))
    assert resolved.canonical == (
        '{"args":{"dtype":null,"stddev":2},"dtype":null,"enable_x64":false,"initializer":"normal",'
        '"key":{"impl":"threefry2x32","seed":3},"shape":[4,5],"threefry_partitionable":true}'
    )
    assert resolved.digest == resolved.tensor_digest == hashlib.sha256(resolved.canonical.encode()).hexdigest()
    assert (resolved.shape, resolved.out_dtype, resolved.dtype) == ((4, 5), "float32", None)
    assert (resolved.start, resolved.stop, resolved.nbytes, resolved.is_range) == (0, 20, 80, False)


def test_one_request_one_digest_whatever_its_spelling() -> None:
    plain = _resolve("normal", (4, 5))
    for same in [
        _resolve("normal", [4, 5]),
        _resolve("normal", (np.int64(4), np.uint8(5))),
        _resolve("normal", (4, 5), args={"stddev": 0.01}),  # the default, spelled out
        _resolve("normal", (4, 5), args={"dtype": None}),
        _resolve("normal", (4, 5), dtype=""),
        _resolve("normal", (4, 5), threefry_partitionable=True, enable_x64=False),  # the defaults, spelled out
        _resolve("normal", (4, 5), request_id="echoed, never hashed"),
    ]:
        assert same.canonical == plain.canonical and same.digest == plain.digest
    folded = _resolve("normal", (4, 5), key=Key(seed=0, fold_in=(1, 2)))
    assert _resolve("normal", (4, 5), key=Key(seed=0, derive=(("fold_in", 1), ("fold_in", 2)))).digest == folded.digest


@pytest.mark.parametrize(
    "change",
    [
        {"shape": (5, 4)},
        {"args": {"stddev": 0.02}},
        {"dtype": "bfloat16"},
        {"key": Key(seed=1)},
        {"key": Key(seed=0, impl="philox4x32")},
        {"key": Key(seed=0, fold_in=(1,))},
        {"threefry_partitionable": False},
        {"jit": True},
        {"dtype": "float64"},
    ],
)
def test_anything_the_values_depend_on_changes_the_digest(change: dict[str, Any]) -> None:
    assert _resolve(**change).digest != _resolve().digest


def test_jit_is_in_the_canonical_form_only_when_asked() -> None:
    assert '"jit"' not in _resolve().canonical  # digests of eager requests stay as they were
    assert json.loads(_resolve(jit=True).canonical)["jit"] is True
    for bad in (1, "true", None):
        with pytest.raises(InvalidArgument, match="jit must be true or false"):
            _resolve(jit=bad)


def test_a_range_is_named_in_its_canonical_form_and_keeps_the_whole_tensors_digest() -> None:
    whole = _resolve("normal", (4, 5))
    ranged = _resolve("normal", (4, 5), offset=3, count=7)
    assert json.loads(ranged.canonical)["range"] == [3, 10]
    assert ranged.digest == hashlib.sha256(ranged.canonical.encode()).hexdigest() != whole.digest
    assert ranged.tensor_digest == whole.digest  # the tensor it is a range of
    assert (ranged.start, ranged.stop, ranged.nbytes, ranged.is_range) == (3, 10, 28, True)
    assert ranged.call_key == whole.call_key  # the same initializer call
    # The whole tensor asked as a range is named as one, but is no range.
    full = _resolve("normal", (4, 5), offset=0)
    assert json.loads(full.canonical)["range"] == [0, 20] and not full.is_range
    assert _resolve("normal", (4, 5), count=0).nbytes == 0
    assert (_resolve("normal", (4, 5), offset=20).start, _resolve("normal", (4, 5), offset=20).stop) == (20, 20)


@pytest.mark.parametrize(
    ("offset", "count", "message"),
    [
        (-1, None, "offset must be a non-negative int"),
        (None, -1, "count must be a non-negative int"),
        (True, None, "offset must be a non-negative int"),
        (1.0, None, "offset must be a non-negative int"),
        ("1", None, "offset must be a non-negative int"),
        (21, None, "past the end of a tensor of 20 elements"),
        (10, 11, "offset 10 \\+ count 11 is past the end"),
        (None, 21, "past the end"),
    ],
)
def test_ranges_outside_the_tensor_are_refused(offset: Any, count: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _resolve("normal", (4, 5), offset=offset, count=count)


def test_the_call_key_is_the_call_without_the_key() -> None:
    one = _resolve("normal", (4, 5), key=Key(seed=1))
    assert one.call_key == _resolve("normal", (4, 5), key=Key(seed=2), request_id="x").call_key
    assert one.call_key != _resolve("normal", (4, 5), args={"stddev": 1.0}).call_key
    assert one.call_key != _resolve("normal", (4, 5), threefry_partitionable=False).call_key
    hash(one.call_key)


@pytest.mark.parametrize(
    ("dtype", "args", "x64", "out_dtype", "enable_x64"),
    [
        (None, {}, None, "float32", False),  # JAX's default float, x64 off
        (None, {}, True, "float64", True),  # with x64 on, JAX's default float is float64
        ("float64", {}, None, "float64", True),  # a 64-bit type turns x64 on: JAX would truncate it
        (None, {"dtype": "float64"}, None, "float64", True),  # the factory's dtype counts as asked
        ("bfloat16", {}, True, "bfloat16", True),
        ("int64", {}, None, "int64", True),
    ],
)
def test_dtype_and_x64_defaults(dtype: Any, args: dict, x64: Any, out_dtype: str, enable_x64: bool) -> None:
    resolved = _resolve("normal", (2,), args=args, dtype=dtype, enable_x64=x64)
    assert (resolved.out_dtype, resolved.enable_x64) == (out_dtype, enable_x64)
    assert resolved.dtype == dtype


def test_the_servers_defaults_fill_what_is_unset() -> None:
    legacy = PrngDefaults(threefry_partitionable=False, enable_x64=True)
    resolved = _resolve("normal", (2,), defaults=legacy)
    assert (resolved.threefry_partitionable, resolved.enable_x64, resolved.out_dtype) == (False, True, "float64")
    assert _resolve("normal", (2,), defaults=legacy, threefry_partitionable=True).threefry_partitionable is True


def test_a_64_bit_type_with_x64_off_is_refused_not_truncated() -> None:
    for fields in ({"dtype": "float64"}, {"args": {"dtype": "complex128"}}, {"dtype": "uint64"}):
        with pytest.raises(InvalidArgument, match="needs enable_x64=true"):
            _resolve("normal", (2,), enable_x64=False, **fields)


def test_keys_where_needed_and_only_there() -> None:
    with pytest.raises(InvalidArgument, match="normal needs a key"):
        _resolve("normal", (2,), key=None)
    for name in ("zeros", "ones", "zeros_init", "ones_init"):
        keyless = _resolve(name, (2,), key=Key(seed=5))
        assert keyless.key is None and json.loads(keyless.canonical)["key"] is None
        assert keyless.digest == _resolve(name, (2,), key=None).digest  # the key changes nothing: not named
    required = {"constant": {"value": 1}, "variance_scaling": {"scale": 1, "mode": "fan_in", "distribution": "normal"}}
    for name, spec in CATALOG.items():
        resolved = _resolve(name, (2, 2), key=Key(seed=1), args=required.get(name, {}))
        assert (resolved.key is not None) == spec.uses_key, name


def test_a_stacked_key_makes_a_tensor_with_its_stack_leading() -> None:
    key = Key(seed=0, derive=(("stack", 3), ("fold_in", 1), ("stack", 2)))
    assert _resolve("normal", (3, 2, 5), key=key).shape == (3, 2, 5)
    for shape in [(2, 3, 5), (3,), (3, 5)]:
        with pytest.raises(InvalidArgument, match=r"stack steps \[3, 2\]"):
            _resolve("normal", shape, key=key)


def test_stacked_rbg_keys_are_bounded_in_key_by_key_steps() -> None:
    # slices x derive steps, the stack step counted: 4096 x 4 is the bound
    steps = (("stack", MAX_STACK), *(("fold_in", i) for i in range(MAX_KEY_BY_KEY_STEPS // MAX_STACK - 1)))
    _resolve("normal", (MAX_STACK, 2), key=Key(seed=0, impl="rbg", derive=steps))  # at the bound
    over = Key(seed=0, impl="unsafe_rbg", derive=(*steps, ("fold_in", 99)))
    with pytest.raises(TooLarge, match="key by key"):
        _resolve("normal", (MAX_STACK, 2), key=over)
    # threefry batches are vmapped, not derived key by key: no such bound
    _resolve("normal", (MAX_STACK, 2), key=Key(seed=0, derive=over.derive))


def test_the_tensor_limit_counts_bytes_of_the_type() -> None:
    limits = Limits(max_tensor_bytes=1024)
    assert _resolve("normal", (256,), limits=limits).nbytes == 1024
    assert _resolve("normal", (512,), dtype="bfloat16", limits=limits).nbytes == 1024
    with pytest.raises(TooLarge) as info:
        _resolve("normal", (257,), limits=limits)
    assert info.value.message == (
        "a float32 tensor of shape [257] is 1028 bytes; this server's limit is 1024 bytes per tensor"
    )
    # a range of a tensor over the limit is still a tensor over the limit
    with pytest.raises(TooLarge):
        _resolve("normal", (300,), offset=0, count=1, limits=limits)


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"name": "normall"}, UnknownInitializer, "Did you mean normal"),
        ({"name": None}, UnknownInitializer, "unknown initializer None"),
        ({"dtype": "float128"}, UnknownDtype, "unknown dtype 'float128'"),
        ({"args": {"stdev": 1}}, InvalidArgument, "unexpected argument"),
        ({"args": {"stddev": "1"}}, InvalidArgument, "must be a number"),
        ({"request_id": 7}, InvalidArgument, "request_id is at most"),
        ({"shape": "45"}, InvalidArgument, "shape must be a sequence"),
        ({"shape": (4, -5)}, InvalidArgument, "non-negative ints"),
    ],
)
def test_bad_requests_are_refused_in_their_own_words(fields: dict[str, Any], error: type, message: str) -> None:
    name = fields.pop("name", "normal")
    with pytest.raises(error, match=message) as info:
        _resolve(name, **fields)
    assert isinstance(info.value, JaxinitError) and len(info.value.message) < 600


def test_limits_give_each_caller_a_quarter_unless_told() -> None:
    assert Limits().caller_bytes == Limits().max_inflight_bytes // 4
    assert Limits(max_inflight_bytes=400).caller_bytes == 100
    assert Limits(max_caller_bytes=7).caller_bytes == 7
    assert Limits(max_caller_bytes=0).caller_bytes == 0


def test_a_resolved_request_is_plain_frozen_data() -> None:
    resolved = _resolve()
    with pytest.raises(AttributeError):
        resolved.shape = (1,)  # type: ignore[misc]
    assert math.prod(resolved.shape) == resolved.stop
