"""A plan's ``jit`` (the default its user gets: ``jax.jit(model.init)``'s values) and the
key-free entries an exported plan may hold among explicit keys: the description language,
the client's request and the file metadata, without a server."""

from __future__ import annotations

import pytest

from jaxinit._types import ModelRequest
from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.expansion import expand, file_metadata, plan_jit
from jaxinit.protocol.keys import Key

NORMAL = {
    "path": "a.kernel",
    "initializer": "normal",
    "args": {"stddev": 0.02},
    "shape": [2, 3],
    "key": [{"fold_in": 7}],
}
ONES = {"path": "a.scale", "initializer": "ones", "shape": [3]}


def test_a_plans_jit_is_every_tensors_default() -> None:
    assert plan_jit({"params": [NORMAL]}) is False
    assert plan_jit({"params": [NORMAL], "jit": True}) is True
    assert plan_jit({"type": "Dense", "in_features": 2, "features": 3}) is False  # a module: no plan field
    with pytest.raises(InvalidArgument, match="model.jit must be true or false"):
        plan_jit({"params": [NORMAL], "jit": "yes"})
    assert [p.jit for p in expand({"params": [NORMAL, ONES], "jit": True})] == [True, True]
    assert [p.jit for p in expand({"params": [NORMAL, ONES]})] == [False, False]


def test_key_free_values_need_no_key_among_explicit_ones() -> None:
    params = expand({"params": [ONES, NORMAL]}, mode="nnx")
    assert [p.name for p in params] == ["a.scale", "a.kernel"] and params[1].fold_in == 7
    keyless_normal = {**NORMAL, "path": "b.kernel"}
    del keyless_normal["key"]
    with pytest.raises(InvalidArgument, match=r"model.params\[1\]: give every parameter of the raw form a 'key'"):
        expand({"params": [NORMAL, keyless_normal]})


def test_the_client_settles_jit_from_the_call_else_the_plan() -> None:
    plan = {"params": [NORMAL], "jit": True}
    assert ModelRequest(plan, Key(seed=0)).jit is True
    assert ModelRequest(plan, Key(seed=0)).to_json()["prng"] == {"jit": True}
    off = ModelRequest(plan, Key(seed=0), jit=False)
    assert off.jit is False and off.model["jit"] is False and "prng" not in off.to_json()  # the plan's own says so
    assert ModelRequest({"params": [NORMAL]}, Key(seed=0), jit=True).to_json()["prng"] == {"jit": True}
    assert ModelRequest({"params": [NORMAL]}, Key(seed=0)).jit is False
    with pytest.raises(InvalidArgument, match="jit must be true, false or None"):
        ModelRequest(plan, Key(seed=0), jit=1)  # type: ignore[arg-type]


def test_a_model_files_metadata_says_jit() -> None:
    common = {"mode": "linen", "layout": "flax", "root": Key(seed=1), "threefry_partitionable": True}
    assert file_metadata({}, **common, enable_x64=False, model_digest="d", jit=True)["jit"] == "true"
    assert file_metadata({}, **common, enable_x64=False, model_digest="d")["jit"] == "false"
