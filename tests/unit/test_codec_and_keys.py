from __future__ import annotations

import json
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

import jaxinit
from jaxinit.protocol import safetensors
from jaxinit.protocol.codec import (
    DTYPES,
    ML_DTYPES_NAMES,
    array_from_buffer,
    dtype_name,
    raw_bits_dtype,
    to_float32,
    to_wire_bytes,
)
from jaxinit.protocol.keys import KEY_IMPLS, Key, as_key, derive_from_json, derive_from_text


@pytest.mark.parametrize("name", list(DTYPES))
def test_every_dtype_round_trips_through_the_wire(name: str) -> None:
    array = (np.arange(6) % 2).astype(DTYPES[name]).reshape(2, 3)
    wire = to_wire_bytes(array)
    assert bytes(wire) == array.tobytes()
    back = array_from_buffer(bytes(wire), (2, 3), name)
    assert back.dtype == array.dtype and back.tobytes() == array.tobytes()
    scalar = np.asarray(array[0, 1])
    assert bytes(to_wire_bytes(scalar)) == scalar.tobytes()


def test_wire_bytes_are_little_endian() -> None:
    big = np.arange(3, dtype=">f4")
    assert bytes(to_wire_bytes(big)) == np.arange(3, dtype="<f4").tobytes()


def test_dtype_names_from_every_spelling() -> None:
    assert dtype_name(jax.numpy.bfloat16) == dtype_name(ml_dtypes.bfloat16) == "bfloat16"
    assert dtype_name(np.dtype("float16")) == "float16"
    assert dtype_name(jax.numpy.float8_e4m3fn) == "float8_e4m3fn"
    with pytest.raises(jaxinit.UnknownDtype):
        dtype_name("int4")


@pytest.mark.parametrize("name", sorted(ML_DTYPES_NAMES))
def test_raw_bits_give_every_value_exactly_as_ml_dtypes_does(name: str) -> None:
    """Without ml_dtypes a bfloat16/float8 array is raw bits: every bit pattern's float32
    value equals ml_dtypes' (the all-patterns sweep: 65,536 for bfloat16, 256 for float8)."""
    typed = np.dtype(getattr(ml_dtypes, name))
    bits = np.arange(256**typed.itemsize, dtype=np.uint16 if typed.itemsize == 2 else np.uint8)
    want = bits.view(typed).astype(np.float32)
    raw = bits.view(raw_bits_dtype(name))
    for got in (to_float32(raw), to_float32(bits.view(typed))):
        assert got.dtype == np.float32
        assert np.array_equal(np.isnan(got), np.isnan(want))
        finite = ~np.isnan(want)
        assert got[finite].tobytes() == want[finite].tobytes()  # -0.0 and inf included, bit for bit
    assert dtype_name(raw.dtype) == dtype_name(raw[3:].copy().reshape(1, -1).dtype) == name


def test_raw_bits_refuse_arithmetic_and_casts_rather_than_compute_on_the_bits() -> None:
    raw = np.array([0x3FC0], dtype=np.uint16).view(raw_bits_dtype("bfloat16"))
    for misuse in (lambda: raw + 1, lambda: raw.sum(), lambda: raw.astype(np.float32), lambda: float(raw[0])):
        with pytest.raises((TypeError, ValueError)):
            misuse()
    assert raw.view(ml_dtypes.bfloat16)[0] == 1.5
    with pytest.raises(jaxinit.InvalidArgument, match="float64"):
        to_float32(np.zeros(2))
    with pytest.raises(ValueError, match="numpy type"):
        raw_bits_dtype("float32")


def test_safetensors_store_raw_bits_as_their_own_type() -> None:
    """A BF16 file from raw bits is the file ml_dtypes' array makes, and torch reads it."""
    torch = pytest.importorskip("torch", reason="torch: the release tier's extra (make setup-release)")
    from safetensors.torch import load

    values = np.array([1.5, -2.25, 3e38, -0.0], dtype=ml_dtypes.bfloat16)
    raw = values.view(np.uint16).view(raw_bits_dtype("bfloat16"))
    data = safetensors.dumps({"w": raw})
    assert data == safetensors.dumps({"w": values})
    assert load(data)["w"].view(torch.int16).numpy().tobytes() == values.tobytes()


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


def test_an_answer_without_the_derive_steps_asked_for_is_refused() -> None:
    """A server older than derive steps drops them (an unknown proto field) and answers for
    the plain key: the client refuses the tensor rather than return other values."""
    from jaxinit._types import check_derived

    key = jaxinit.split(jaxinit.key(3), 4)[1]

    def answer(answered: Key) -> jaxinit.Tensor:
        canonical = json.dumps({"key": answered.to_json()})
        provenance = jaxinit.Provenance(canonical_request=canonical)
        return jaxinit.Tensor(np.zeros(1, np.float32), provenance)

    assert check_derived(key, answer(key)).array.shape == (1,)
    assert check_derived(jaxinit.key(3), answer(jaxinit.key(3)))  # no steps: nothing to check
    with pytest.raises(jaxinit.ProtocolError, match="older than this client"):
        check_derived(key, answer(jaxinit.key(3)))
    model_tensor = answer(jaxinit.fold_in(key, 9))  # a model's tensor: the root's steps, then its own
    assert check_derived(key, model_tensor) is model_tensor
    # jit asked of a server that predates it: it answers eagerly, its canonical request says no jit
    eager = jaxinit.Tensor(np.zeros(1, np.float32), jaxinit.Provenance(canonical_request='{"key": null}'))
    with pytest.raises(jaxinit.ProtocolError, match="eager values where jit values"):
        check_derived(None, eager, jit=True)
    compiled = jaxinit.Tensor(np.zeros(1, np.float32), jaxinit.Provenance(canonical_request='{"jit":true,"key":null}'))
    assert check_derived(None, compiled, jit=True) is compiled


def test_without_ml_dtypes_only_named_raw_bits_are_bfloat16_or_float8() -> None:
    """A plain |V1 (as .npy stores any float8) is no float8 type in particular: refused."""
    code = (
        "import sys; sys.modules['ml_dtypes'] = None\n"
        "import numpy as np\n"
        "from jaxinit.protocol.codec import dtype_name, raw_bits_dtype\n"
        "from jaxinit.protocol.errors import UnknownDtype\n"
        "assert dtype_name(raw_bits_dtype('float8_e5m2')) == 'float8_e5m2'\n"
        "for plain in ('V1', 'V2'):\n"
        "    try:\n"
        "        dtype_name(np.dtype(plain)); print('accepted', plain)\n"
        "    except UnknownDtype:\n"
        "        print('refused', plain)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["refused", "V1", "refused", "V2"], out.stderr


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_model_params_give_torch_the_same_bits_from_raw_bits_and_from_ml_dtypes(name: str) -> None:
    torch = pytest.importorskip("torch", reason="torch: the release tier's extra (make setup-release)")

    typed = np.array([1.5, -0.25, 0.0, -2.0], dtype=getattr(ml_dtypes, name))
    raw = typed.view(np.uint8).view(raw_bits_dtype(name))
    states = [jaxinit.ModelParams({"layer": {"w": array}}).to_torch() for array in (typed, raw)]
    for state in states:
        assert state["layer.w"].dtype == getattr(torch, name)
        assert state["layer.w"].float().tolist() == [1.5, -0.25, 0.0, -2.0]
