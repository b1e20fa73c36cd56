"""Keys as jaxinit carries them: every key implementation JAX has, the forms a caller may
pass, and the derivation steps (fold_in, split, stack) with their JSON and text forms."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxinit
from jaxinit.protocol.keys import KEY_IMPLS, Key, as_key, derive_from_json, derive_from_text


def test_key_impls_are_every_one_jax_offers() -> None:
    from jax._src.random import prng  # the only place that lists them all

    assert {name: (words,) for name, words in KEY_IMPLS.items()} == {
        name: impl.key_shape for name, impl in prng.prngs.items()
    }
    for impl, words in KEY_IMPLS.items():
        assert jax.random.key_data(jax.random.key(0, impl=impl)).shape == (words,)


def test_key_forms() -> None:
    assert as_key(5) == Key(seed=5)
    assert as_key(np.int64(-5)) == Key(seed=-5)
    assert as_key(np.array([1, 2], np.uint32)) == Key(data=(1, 2))
    assert as_key(jax.random.key(3, impl="rbg")).impl == "rbg"
    assert as_key(jax.random.PRNGKey(3)) == Key(data=(0, 3))
    with pytest.raises(jaxinit.InvalidArgument, match="batch"):
        as_key(jax.random.split(jax.random.key(0)))
    with pytest.raises(jaxinit.InvalidArgument, match="int64"):
        jaxinit.key(2**63)
    with pytest.raises(jaxinit.InvalidArgument, match="4 uint32 words"):
        jaxinit.wrap_key_data([1, 2], impl="rbg")
    with pytest.raises(jaxinit.InvalidArgument):
        as_key(True)


def test_derivation_steps_keep_plain_keys_as_they_were_and_round_trip() -> None:
    from jaxinit.protocol.keys import MAX_FOLD_IN, MAX_SPLIT, derive_from_json, derive_from_text

    folded = jaxinit.fold_in(jaxinit.fold_in(jaxinit.key(1), 2), 3)
    assert folded == Key(seed=1, fold_in=(2, 3)) and "derive" not in folded.to_json()  # digests unchanged
    chain = jaxinit.fold_in(jaxinit.split(folded, 4)[3], 5)
    assert chain.steps == (("fold_in", 2), ("fold_in", 3), ("split", 4, 3), ("fold_in", 5))
    assert chain.to_json()["derive"] == [{"split": [4, 3]}, {"fold_in": 5}]
    assert derive_from_json(chain.to_json()["derive"]) == chain.derive
    assert derive_from_text(chain.derive_text()) == chain.derive == derive_from_text("split:4:3, fold_in:5")
    assert jaxinit.split(chain, 1)[0].derive[-1] == ("split", 1, 0)
    # one spelling per key: leading fold_in steps of derive join the fold_in list
    assert Key(seed=1, fold_in=(2,), derive=(("fold_in", 3), ("split", 2, 1))) == jaxinit.split(folded, 2)[1]
    assert Key(seed=1, derive=(("fold_in", 2), ("fold_in", 3))) == folded
    for bad, match in [
        ("split:2:2", "0 <= index < num"),
        ("split:0:0", "1 <= num"),
        (f"split:{MAX_SPLIT + 1}:0", "1 <= num"),
        ("fold_in:-1", "fold_in"),
        ("shuffle:1", "fold_in"),
        ("split:two:1", "split:NUM:INDEX"),
    ]:
        with pytest.raises(jaxinit.InvalidArgument, match=match):
            derive_from_text(bad)
    for bad_json in ([{"split": 3}], [{"fold_in": 1, "split": [2, 0]}], {"fold_in": 1}, [[1]]):
        with pytest.raises(jaxinit.InvalidArgument):
            derive_from_json(bad_json)
    with pytest.raises(jaxinit.InvalidArgument, match="at most"):
        Key(seed=0, fold_in=(1,) * MAX_FOLD_IN, derive=(("split", 2, 0),))
    with pytest.raises(jaxinit.InvalidArgument, match="split and stack steps"):
        Key(seed=0, derive=(("split", 2, 0),) * 9)


def test_stack_steps_make_a_batch_key() -> None:
    """``stacked`` adds a stack step: the key's ``stack`` names the leading axes of what it
    makes, and the step has a JSON and a text form that read back to it."""
    batch = jaxinit.fold_in(jaxinit.stacked(jaxinit.fold_in(jaxinit.key(1), 2), 3), 4)
    assert batch.stack == (3,) and batch.fold_in == (2,)
    assert batch.to_json()["derive"] == [{"stack": 3}, {"fold_in": 4}]
    assert derive_from_json(batch.to_json()["derive"]) == batch.derive
    assert batch.derive_text() == "stack:3,fold_in:4" and derive_from_text(batch.derive_text()) == batch.derive
    assert jaxinit.stacked(batch, 5).stack == (3, 5)
    assert jaxinit.key(1).stack == ()
    for bad, match in [("stack:0", "1 <= num"), ("stack:4097", "1 <= num"), ("stack:2:1", "stack num")]:
        with pytest.raises(jaxinit.InvalidArgument, match=match):
            derive_from_text(bad)
    with pytest.raises(jaxinit.InvalidArgument, match="at most 4096 slices"):
        jaxinit.stacked(jaxinit.stacked(0, 64), 65)
    with pytest.raises(jaxinit.InvalidArgument):
        derive_from_json([{"stack": [2]}])
    with pytest.raises(jaxinit.InvalidArgument, match="stacked takes"):
        jaxinit.stacked(0, True)


def test_a_key_is_a_seed_or_data_never_both_and_only_known_impls() -> None:
    for fields, match in [
        ({}, "exactly one of a seed or key data"),
        ({"seed": 1, "data": (1, 2)}, "exactly one of a seed or key data"),
        ({"seed": 1, "impl": "threefry"}, "unknown key implementation"),
        ({"seed": 1.0}, "a seed must be an int"),
        ({"seed": True}, "a seed must be an int"),
        ({"seed": -(2**63) - 1}, "does not fit in int64"),
        ({"data": (1, 2, 3)}, "threefry2x32 key data must be 2 uint32 words"),
        ({"data": (1, 2**32)}, "uint32 words"),
        ({"data": (1,), "impl": "philox2x32"}, None),
        ({"seed": 0, "fold_in": (2**32,)}, "fold_in takes a uint32"),
        ({"seed": 0, "fold_in": (True,)}, "fold_in takes a uint32"),
    ]:
        if match is None:
            Key(**fields)  # type: ignore[arg-type]
            continue
        with pytest.raises(jaxinit.InvalidArgument, match=match):
            Key(**fields)  # type: ignore[arg-type]
    assert Key(seed=-(2**63)).seed == -(2**63) and Key(seed=2**63 - 1).seed == 2**63 - 1


def test_the_json_form_leaves_out_what_is_empty() -> None:
    assert Key(seed=3).to_json() == {"seed": 3, "impl": "threefry2x32"}
    assert Key(data=(1, 2, 3, 4), impl="rbg").to_json() == {"data": [1, 2, 3, 4], "impl": "rbg"}
    assert Key(seed=0, fold_in=(5,)).to_json() == {"seed": 0, "impl": "threefry2x32", "fold_in": [5]}


@pytest.mark.parametrize("bad", [-1, 2**32, True, 1.5, "3"])
def test_fold_in_takes_a_uint32_as_jax_does(bad: object) -> None:
    with pytest.raises(jaxinit.InvalidArgument):
        jaxinit.fold_in(jaxinit.key(0), bad)  # type: ignore[arg-type]
    assert jaxinit.fold_in(0, 2**32 - 1).fold_in == (2**32 - 1,)


def test_raw_key_arrays_other_than_two_uint32_words_are_refused() -> None:
    for raw in ([1, 2], np.array([1, 2], np.int64), np.zeros((2, 2), np.uint32), np.zeros(3, np.uint32)):
        with pytest.raises(jaxinit.InvalidArgument, match="uint32 array of shape"):
            as_key(raw)
    with pytest.raises(jaxinit.InvalidArgument, match="1-D sequence of uint32 words"):
        jaxinit.wrap_key_data(np.zeros((2, 2), np.uint32))
    with pytest.raises(jaxinit.InvalidArgument, match="expected a key"):
        as_key("0")
    assert jaxinit.wrap_key_data(np.array([7], np.uint32), impl="philox2x32") == Key(data=(7,), impl="philox2x32")


def test_derived_keys_are_jaxs_derived_keys() -> None:
    """What the steps mean (the server's engine makes them so; checked here against JAX)."""
    from jaxinit_server.core.engine import _make_key

    chain = jaxinit.fold_in(jaxinit.split(jaxinit.fold_in(jaxinit.key(5, impl="threefry2x32"), 3), 4)[2], 9)
    want = jax.random.fold_in(jax.random.split(jax.random.fold_in(jax.random.key(5), 3), 4)[2], 9)
    assert _make_key(chain)[1] == tuple(np.asarray(jax.random.key_data(want)).tolist())
