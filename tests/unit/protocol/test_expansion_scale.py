"""Model expansion at scale and under hostile input: linear in the parameters, bounded in
path length and nesting, and short in what its errors quote back.

No test here times anything: linearity is checked by counting the Python lines that
expansion runs (a deterministic measure of its work) at two sizes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from jaxinit import InvalidArgument, UnknownInitializer
from jaxinit import models as m
from jaxinit.protocol import model as models
from jaxinit.protocol.codec import DTYPE_NAMES
from jaxinit.protocol.model import (
    MAX_DEPTH,
    MAX_NAME_CHARS,
    MAX_PATH_COMPONENTS,
    MODULE_TYPES,
    expand,
    linen_fold_in,
    nest,
    outputs,
)
from jaxinit.protocol.values import quote


def raw(n: int, path: Callable[[int], str] = lambda i: f"layer{i}.kernel") -> dict[str, Any]:
    return {"params": [{"path": path(i), "initializer": "zeros", "shape": [1]} for i in range(n)]}


def lines_run(fn: Callable[[], object]) -> int:
    """How many lines of the model language (jaxinit/protocol/model/, generator expressions
    included) ``fn`` runs."""
    count = 0
    target = os.path.dirname(models.__file__)

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        if os.path.dirname(frame.f_code.co_filename) != target:
            return None
        nonlocal count
        count += event == "line"
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return count


# --- (a) large descriptions: right, and linear ---------------------------------------------


@pytest.mark.release  # (seconds each; the linear-work checks below stay in the default tiers)
@pytest.mark.timeout(60)
def test_raw_form_of_100_000_parameters() -> None:
    small, big = expand(raw(10_000)), expand(raw(100_000))
    assert len(small) == 10_000 and len(big) == 100_000
    assert (big[0].name, big[-1].name) == ("layer0.kernel", "layer99999.kernel")
    # linen: each kernel is its module's first parameter, so its key hangs on its path alone
    assert big[0].fold_in == linen_fold_in(("layer0", 1))
    assert big[-1].fold_in == linen_fold_in(("layer99999", 1))
    assert big[:10_000] == small  # the same parameters as the smaller description's
    assert [p.fold_in for p in expand(raw(10_000), mode="nnx")[-3:]] == [9_997, 9_998, 9_999]
    assert len(outputs(big, "torch")) == 100_000
    tree = nest({p.name: i for i, p in enumerate(big)})
    assert len(tree) == 100_000 and tree["layer99999"] == {"kernel": 99_999}


@pytest.mark.release  # (seconds each; the linear-work checks below stay in the default tiers)
@pytest.mark.timeout(60)
def test_raw_form_with_shared_modules_counts_per_module() -> None:
    # 100,000 parameters in 100 modules (of 10 submodules each): the count n in each module
    # runs on across entries that are far apart, as Flax's does.
    params = expand(raw(100_000, lambda i: f"m{i % 100}.s{i // 100 % 10}.p{i}"))
    assert len(params) == 100_000
    assert params[-1].name == "m99.s9.p99999"
    # m99.s9 holds i = 999 + 1000 k (k = 0..99): p99999 is its 100th parameter
    assert params[-1].fold_in == linen_fold_in(("m99", "s9", 100))
    assert params[0].fold_in == linen_fold_in(("m0", "s0", 1))


@pytest.mark.timeout(60)
def test_nested_description_of_20_000_modules() -> None:
    def model(blocks: int) -> dict[str, Any]:
        return m.Module(*(m.Module(*(m.Dense(2, 2) for _ in range(199)), cls="Block") for _ in range(blocks)))

    big = expand(model(100))  # 100 blocks of 199 Dense: 20,000 modules
    assert len(big) == 100 * 199 * 2
    assert (big[0].name, big[-1].name) == ("Block_0.Dense_0.kernel", "Block_99.Dense_198.bias")
    assert big[-1].fold_in == linen_fold_in(("Block_99", "Dense_198", 2))
    assert big[: 199 * 2] == expand(model(1))
    assert [p.fold_in for p in expand(model(100), mode="nnx")] == list(range(len(big)))


LINEAR_CASES: dict[str, Callable[[int], object]] = {
    "raw": lambda n: expand(raw(n)),
    "raw-nnx": lambda n: expand(raw(n), mode="nnx"),
    "siblings": lambda n: expand(m.Module(*(m.Dense(1, 1) for _ in range(n)))),
    "torch-outputs": lambda n: outputs(expand(raw(n)), "torch"),
    "nest": lambda n: nest({f"m{i}.s{i % 7}.w": i for i in range(n)}),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(LINEAR_CASES))
def test_expansion_work_is_linear(case: str) -> None:
    # 4x the parameters must be about 4x the work (a scan of the siblings per parameter
    # made it about 16x). Lines run are counted, not timed: the ratio is 4.00 at any size.
    fn = LINEAR_CASES[case]
    ratio = lines_run(lambda: fn(2_000)) / lines_run(lambda: fn(500))
    assert 3.5 < ratio < 4.5, ratio


def _repeated(n: int) -> object:
    with pytest.raises(InvalidArgument, match="repeat") as info:
        expand(raw(n, lambda i: "a.w"))
    assert len(info.value.message) < 300
    return info


@pytest.mark.timeout(60)
def test_repeated_names_are_found_in_linear_work() -> None:
    assert 3.5 < lines_run(lambda: _repeated(2_000)) / lines_run(lambda: _repeated(500)) < 4.5
    with pytest.raises(InvalidArgument, match="unique among siblings") as info:
        expand(m.Module(*(m.Param(f"w{i % 2}", "zeros", [1]) for i in range(2_000))))
    assert "['w0', 'w1']" in info.value.message


@pytest.mark.release  # (the linear-work check above stays in the default tiers)
@pytest.mark.timeout(60)
def test_repeated_names_at_scale_are_refused_shortly() -> None:
    _repeated(100_000)
    with pytest.raises(InvalidArgument, match="unique among siblings") as info:
        expand(m.Module(*(m.Param(f"w{i % 2}", "zeros", [1]) for i in range(20_000))))
    assert "['w0', 'w1']" in info.value.message


def test_more_parameters_than_the_limit_are_refused_before_the_work() -> None:
    with pytest.raises(InvalidArgument, match=f"more than {models.MAX_PARAMS} parameters"):
        expand({"params": [{"path": "w"}] * (models.MAX_PARAMS + 1)})


# --- (b) bounds --------------------------------------------------------------------------


def refused(desc: object, match: str) -> str:
    with pytest.raises(InvalidArgument, match=match) as info:
        expand(desc)
    message = info.value.message
    # short whatever was echoed; an unknown type's message also lists the known ones
    assert len(message) < 300 + len(", ".join(MODULE_TYPES)), message
    return message


def test_path_components_are_bounded() -> None:
    assert MAX_PATH_COMPONENTS == 64 and MAX_NAME_CHARS == 256
    message = refused(raw(1, lambda i: "a." * 2_999 + "w"), "more than 64 dotted components")
    assert "(5999 characters)" in message
    refused(raw(1, lambda i: ".".join(["a"] * 65)), "more than 64")
    deepest = expand(raw(1, lambda i: ".".join(["a"] * 64)))  # exactly the limit is fine
    assert len(deepest[0].path) == 64
    refused(raw(1, lambda i: "a" * 30_000_000), "at most 256 characters")  # no dots: one long name
    refused(raw(1, lambda i: "a." * 5_000_000 + "w"), "more than 64")


def test_path_component_length_is_bounded() -> None:
    message = refused(raw(1, lambda i: "enc." + "x" * 300 + ".kernel"), "at most 256 characters")
    assert "(300 characters)" in message
    assert len(expand(raw(1, lambda i: "x" * 256 + ".k"))[0].path[0]) == 256
    message = refused(m.Module(m.Dense(2, 2, name="n" * 300)), "at most 256 characters")
    assert "(300 characters)" in message
    refused(m.Module(m.Param("p" * 257, "zeros", [1])), "at most 256 characters")
    refused(m.Module(m.Module(m.Dense(2, 2), cls="C" * 10_000)), "at most 256 characters")


@pytest.mark.parametrize("kind", ["Module", "Sequential"])
def test_deep_nesting_is_refused_early(kind: str) -> None:
    desc: dict[str, Any] = {"type": "Dense", "in_features": 2, "features": 2}
    for _ in range(2_000):
        desc = {"type": kind, "children" if kind == "Module" else "layers": [desc]}
    refused(desc, f"deeper than {MAX_DEPTH} levels")
    assert sys.getrecursionlimit() // 10 > MAX_DEPTH


# --- (c) what errors quote back ------------------------------------------------------------


def test_echoed_values_are_truncated() -> None:
    message = refused({"type": "Dense", "in_features": "y" * 10_000, "features": 2}, "in_features")
    assert "'yyyyyyy" in message and "... (10000 characters)" in message
    message = refused({"params": [{"path": "a..b" + "z" * 100_000}]}, "dotted name")
    assert "... (100004 characters)" in message
    message = refused({"params": [{"path": "w", "initializer": "zeros", "shape": [[1] * 100_000]}]}, "'shape'")
    assert "... (1 item)" in message
    refused({"type": "Dense", "in_features": 2, "features": 2, "param_dtype": "f" * 100_000}, "param_dtype")
    refused({"type": "Dense", "in_features": 2, "features": 2, "w" * 10_000: 1, "v" * 10_000: 2}, "unknown field")
    refused({"type": "Dense" * 10_000}, "unknown module type")
    refused({"type": "Dense", "in_features": 2, "features": 2, "use_bias": list(range(100_000))}, "true or false")
    with pytest.raises(InvalidArgument) as info:
        expand(m.Dense(2, 2), param_dtype="q" * 100_000)
    # the value quoted short, then the known dtypes listed (as for any unknown dtype)
    assert "... (100000 characters)" in info.value.message
    assert len(info.value.message) < 300 + len(", ".join(DTYPE_NAMES)), info.value.message
    with pytest.raises(UnknownInitializer) as unknown:
        expand(m.Dense(2, 2, kernel_init="k" * 100_000))
    assert "(100000 characters)" in unknown.value.message and len(unknown.value.message) < 600
    with pytest.raises(InvalidArgument) as bad_arg:
        expand(m.Dense(2, 2, kernel_init={"initializer": "normal", "args": {"stddev": "s" * 100_000}}))
    assert "(100000 characters)" in bad_arg.value.message and len(bad_arg.value.message) < 300


def test_deeply_nested_values_are_quoted_without_recursion() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    message = refused({"type": "Dense", "in_features": value, "features": 2}, "in_features")
    assert "[[[[[[[[" in message and "... (1 item)" in message
    refused(value, "must be an object")
    refused(
        {"type": "Module", "children": [{"type": "Param", "name": value, "initializer": "zeros", "shape": [1]}]},
        "needs a 'name'",
    )


def test_short_values_are_quoted_as_repr() -> None:
    for value in ["abc", b"xy", 3, 2.5, None, True, [1, "a", (2,)], {"k": [1, 2]}, (), (1,), "x" * 78]:
        assert quote(value) == repr(value)
    assert quote("x" * 81) == "'" + "x" * 79 + "... (81 characters)"
    assert quote(list(range(1000)), 10) == "[0, 1, 2, ... (1000 items)"
    assert quote(10**5000).startswith("<int")  # past Python's digit limit: no crash
    huge = {"type": "Conv", "in_features": 3, "features": 4, "kernel_size": 3, "feature_group_count": 10**5000}
    refused(huge, "feature_group_count <int>")
