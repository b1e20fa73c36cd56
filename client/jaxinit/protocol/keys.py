"""Keys as jaxinit carries them: a seed or raw key data, with a key implementation name.

JAX-free. Turns whatever a user passes as ``key`` (an int seed, a
:class:`Key`, a raw uint32 key array, a JAX key when JAX is installed) into one
:class:`Key`; the server turns that into a JAX key.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxinit.protocol.errors import InvalidArgument

__all__ = [
    "DEFAULT_IMPL",
    "KEY_IMPLS",
    "MAX_FOLD_IN",
    "MAX_SPLIT",
    "MAX_SPLIT_STEPS",
    "MAX_STACK",
    "Key",
    "Step",
    "as_key",
    "derive_from_json",
    "derive_from_text",
    "fold_in",
    "key",
    "split",
    "stacked",
    "step_json",
    "wrap_key_data",
]

# Key implementation -> number of uint32 words of its key data (every one JAX 0.10 has;
# a test compares this table with the installed JAX's registry).
KEY_IMPLS: dict[str, int] = {
    "threefry2x32": 2,
    "rbg": 4,
    "unsafe_rbg": 4,
    "threefry4x32": 4,
    "philox2x32": 1,
    "philox4x32": 2,
}
DEFAULT_IMPL = "threefry2x32"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_FOLD_IN = 64  # derivation steps (fold_in and split) one key may carry
MAX_SPLIT = 2**16  # split(key, num): the server makes all num keys to take one
MAX_SPLIT_STEPS = 8  # split and stack steps one key may carry (each compiles JAX's split for its num)
MAX_STACK = 4096  # slices a stacked key makes (the product of its stack steps' nums)

# One derivation step: ("fold_in", x) is jax.random.fold_in(key, x); ("split", num, i)
# is jax.random.split(key, num)[i]; ("stack", num) is all of jax.random.split(key, num),
# a batch: every later step applies to each of its keys, and the tensor made with the
# key has one slice per key, stacked on a leading axis of size num (as jax.vmap of the
# initializer over the batch, as nn.scan and nnx.vmap initialise stacked layers).
Step = tuple[Any, ...]


def _check_step(step: Any) -> Step:
    def uint32(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**32

    if isinstance(step, tuple) and len(step) == 2 and step[0] == "fold_in" and uint32(step[1]):
        return step
    if isinstance(step, tuple) and len(step) == 3 and step[0] == "split":
        _, num, index = step
        if uint32(num) and uint32(index) and 1 <= num <= MAX_SPLIT and index < num:
            return step
        raise InvalidArgument(
            f"split(key, num)[index] needs 1 <= num <= {MAX_SPLIT} and 0 <= index < num, got "
            f"num={repr(num)[:20]}, index={repr(index)[:20]}"
        )
    if isinstance(step, tuple) and len(step) == 2 and step[0] == "stack":
        if uint32(step[1]) and 1 <= step[1] <= MAX_STACK:
            return step
        raise InvalidArgument(f"a stack step takes 1 <= num <= {MAX_STACK}, got {repr(step[1])[:20]}")
    raise InvalidArgument(
        "a key derivation step is fold_in (a uint32, 0 <= x < 2**32), split [num, index] or stack num, got "
        f"{repr(step)[:60]}"
    )


@dataclass(frozen=True)
class Key:
    """A PRNG key: exactly one of ``seed`` or ``data``, an implementation name, and the
    steps that derive the key used from it.

    ``Key(seed=s, impl=i)`` means ``jax.random.key(s, impl=i)`` on the server;
    ``Key(data=d, impl=i)`` means ``jax.random.wrap_key_data(d, impl=i)``.
    ``fold_in=(a, b)`` then means ``fold_in(fold_in(that key, a), b)`` (uint32 each),
    as Flax derives a parameter's key from the root key; ``derive`` then continues the
    chain with ``("fold_in", x)`` and ``("split", num, i)`` steps, the latter meaning
    ``jax.random.split(key, num)[i]`` (as ``nn.scan`` and ``nnx.split_rngs`` derive a
    layer's key). A ``("stack", num)`` step makes the key a batch, all of
    ``jax.random.split(key, num)``, each later step applying to every key of it: a tensor
    made with a batch key has shape ``(num, *shape)``, slice ``i`` made with key ``i``
    (``jax.vmap`` of the initializer over the keys; how ``nn.scan`` and ``nnx.vmap``
    initialise stacked layers). :func:`fold_in`, :func:`split` and :func:`stacked` build them.
    """

    seed: int | None = None
    data: tuple[int, ...] | None = None
    impl: str = DEFAULT_IMPL
    fold_in: tuple[int, ...] = ()
    derive: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        if self.impl not in KEY_IMPLS:
            raise InvalidArgument(f"unknown key implementation {repr(self.impl)[:40]}; known: {', '.join(KEY_IMPLS)}")
        if (self.seed is None) == (self.data is None):
            raise InvalidArgument("a key needs exactly one of a seed or key data")
        if self.seed is not None:
            if not isinstance(self.seed, int) or isinstance(self.seed, bool):
                raise InvalidArgument(f"a seed must be an int, got {repr(self.seed)[:40]}")
            if not INT64_MIN <= self.seed <= INT64_MAX:
                raise InvalidArgument(
                    f"seed {str(self.seed)[:40]} does not fit in int64, the range jax.random.key accepts"
                )
        if self.data is not None:
            words = KEY_IMPLS[self.impl]
            if len(self.data) != words or not all(isinstance(w, int) and 0 <= w < 2**32 for w in self.data):
                raise InvalidArgument(
                    f"{self.impl} key data must be {words} uint32 words, got {repr(list(self.data))[:80]}"
                )
        folds = self.fold_in
        if len(folds) > MAX_FOLD_IN or not all(
            isinstance(w, int) and not isinstance(w, bool) and 0 <= w < 2**32 for w in folds
        ):
            raise InvalidArgument(
                f"fold_in must be at most {MAX_FOLD_IN} uint32 values (0 <= x < 2**32), got "
                f"{len(folds)} values: {repr(list(folds))[:80]}"
            )
        if len(folds) + len(self.derive) > MAX_FOLD_IN:
            raise InvalidArgument(
                f"a key carries at most {MAX_FOLD_IN} derivation steps (fold_in and split), got "
                f"{len(folds) + len(self.derive)}"
            )
        for step in self.derive:
            _check_step(step)
        if sum(step[0] != "fold_in" for step in self.derive) > MAX_SPLIT_STEPS:
            raise InvalidArgument(f"a key carries at most {MAX_SPLIT_STEPS} split and stack steps")
        if math.prod(self.stack) > MAX_STACK:
            raise InvalidArgument(
                f"a key's stack steps make at most {MAX_STACK} slices in all, got {' x '.join(map(str, self.stack))}"
            )
        # One spelling per key (one canonical request, one digest): fold_ins that lead the
        # derive steps belong to the fold_in list.
        lead = next((i for i, step in enumerate(self.derive) if step[0] != "fold_in"), len(self.derive))
        if lead:
            object.__setattr__(self, "fold_in", (*folds, *(step[1] for step in self.derive[:lead])))
            object.__setattr__(self, "derive", tuple(self.derive[lead:]))

    @property
    def stack(self) -> tuple[int, ...]:
        """The leading axes a tensor made with this key has: each stack step's num, in order
        (empty for a single key)."""
        return tuple(step[1] for step in self.derive if step[0] == "stack")

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every derivation step in order: ``fold_in``'s, then ``derive``'s."""
        return (*(("fold_in", x) for x in self.fold_in), *self.derive)

    def then(self, step: Step) -> Key:
        """This key with one more step (checked, and a leading fold_in kept in the
        ``fold_in`` list, by the key itself)."""
        return Key(seed=self.seed, data=self.data, impl=self.impl, fold_in=self.fold_in, derive=(*self.derive, step))

    def to_json(self) -> dict[str, Any]:
        """The key as the REST API and canonical requests write it.

        >>> Key(seed=3).to_json()
        {'seed': 3, 'impl': 'threefry2x32'}
        >>> split(fold_in(key(0), 1), 4)[2].to_json()
        {'seed': 0, 'impl': 'threefry2x32', 'fold_in': [1], 'derive': [{'split': [4, 2]}]}
        """
        out: dict[str, Any] = {"seed": self.seed} if self.seed is not None else {"data": list(self.data or ())}
        out["impl"] = self.impl
        if self.fold_in:  # absent when empty, so digests of plain keys stay as they were
            out["fold_in"] = list(self.fold_in)
        if self.derive:
            out["derive"] = [step_json(s) for s in self.derive]
        return out

    def derive_text(self) -> str:
        """``derive`` as the GET form and the CLI write it: ``fold_in:3,split:4:2``."""
        return ",".join(":".join(str(part) for part in step) for step in self.derive)


def step_json(step: Step) -> dict[str, Any]:
    """One step in the JSON form of ``derive``: ``{"fold_in": x}``, ``{"split": [num, i]}``, ``{"stack": num}``."""
    if step[0] == "split":
        return {"split": [step[1], step[2]]}
    return {step[0]: step[1]}


def derive_from_json(items: Any) -> tuple[Step, ...]:
    """``derive`` steps from their JSON form ``[{"fold_in": 3}, {"split": [4, 2]}, {"stack": 8}]``."""
    if not isinstance(items, list) or len(items) > MAX_FOLD_IN:
        raise InvalidArgument(f"derive must be a list of at most {MAX_FOLD_IN} steps, got {repr(items)[:60]}")
    steps = []
    for item in items:
        if isinstance(item, dict) and set(item) == {"fold_in"}:
            steps.append(_check_step(("fold_in", item["fold_in"])))
        elif isinstance(item, dict) and set(item) == {"split"} and isinstance(item["split"], list):
            steps.append(_check_step(("split", *item["split"])))
        elif isinstance(item, dict) and set(item) == {"stack"}:
            steps.append(_check_step(("stack", item["stack"])))
        else:
            raise InvalidArgument(
                f'a derive step is {{"fold_in": x}}, {{"split": [num, index]}} or {{"stack": num}}, got '
                f"{repr(item)[:60]}"
            )
    return tuple(steps)


def derive_from_text(text: str) -> tuple[Step, ...]:
    """``derive`` steps from their text form ``fold_in:3,split:4:2,stack:8`` (see :meth:`Key.derive_text`)."""
    steps = []
    for token in filter(None, text.split(",")):
        name, *numbers_ = token.strip().split(":")
        try:
            values = [int(n) for n in numbers_]
        except ValueError:
            raise InvalidArgument(
                f"a derive step is fold_in:X, split:NUM:INDEX or stack:NUM, got {token[:40]!r}"
            ) from None
        steps.append(_check_step((name, *values)))
    return tuple(steps)


def key(seed: int, *, impl: str | None = None) -> Key:
    """Like ``jax.random.key(seed, impl=impl)``: a key made from a seed on the server."""
    return Key(seed=_seed(seed), impl=impl or DEFAULT_IMPL)


def wrap_key_data(data: Any, *, impl: str | None = None) -> Key:
    """Like ``jax.random.wrap_key_data(data, impl=impl)``: a key from raw uint32 words."""
    words = np.asarray(data)
    if words.ndim != 1 or words.dtype.kind not in "ui":
        raise InvalidArgument(f"key data must be a 1-D sequence of uint32 words, got {data!r}")
    return Key(data=tuple(int(w) for w in words.tolist()), impl=impl or DEFAULT_IMPL)


def fold_in(base: Any, data: int) -> Key:
    """Like ``jax.random.fold_in(key, data)``: ``base`` with one more uint32 folded in.

    >>> fold_in(key(0), 7)
    Key(seed=0, data=None, impl='threefry2x32', fold_in=(7,), derive=())
    """
    base = as_key(base)
    if not isinstance(data, numbers.Integral) or isinstance(data, bool):
        raise InvalidArgument(f"fold_in data must be an int, got {data!r}")
    # jax.random.fold_in takes the data as a uint32 and refuses ints outside its range;
    # the step checks the same range.
    return base.then(("fold_in", int(data)))


def split(base: Any, num: int = 2) -> tuple[Key, ...]:
    """Like ``jax.random.split(key, num)``: ``num`` keys, the i-th being
    ``jax.random.split(base, num)[i]`` on the server (nothing is computed here).

    >>> split(key(0), 3)[1].derive
    (('split', 3, 1),)
    """
    base = as_key(base)
    if not isinstance(num, numbers.Integral) or isinstance(num, bool) or not 1 <= num <= MAX_SPLIT:
        raise InvalidArgument(f"split takes 1 <= num <= {MAX_SPLIT}, got {num!r}")
    return tuple(base.then(("split", int(num), i)) for i in range(int(num)))


def stacked(base: Any, num: int) -> Key:
    """The ``num`` keys of ``jax.random.split(base, num)`` as one batch key: an initializer
    called with it and shape ``(num, *shape)`` makes ``num`` slices, slice ``i`` being
    ``init(jax.random.split(base, num)[i], shape, dtype)``, as
    ``jax.vmap(init, in_axes=(0, None, None))`` does over the split keys. Later
    :func:`fold_in` and :func:`split` steps apply to every key of the batch, and a second
    :func:`stacked` adds a second leading axis.

    >>> stacked(key(0), 4).stack
    (4,)
    """
    base = as_key(base)
    if not isinstance(num, numbers.Integral) or isinstance(num, bool) or not 1 <= num <= MAX_STACK:
        raise InvalidArgument(f"stacked takes 1 <= num <= {MAX_STACK}, got {num!r}")
    return base.then(("stack", int(num)))


def as_key(obj: Any) -> Key:
    """Turn what a user passes as an initializer's ``key`` into a :class:`Key`.

    Accepts an int seed, a :class:`Key`, a raw uint32 key array of 2 words (as
    ``jax.random.PRNGKey`` makes, read as threefry2x32), or a JAX key array.

    Raises:
        InvalidArgument: for anything else, with what was expected.
    """
    if isinstance(obj, Key):
        return obj
    if isinstance(obj, numbers.Integral) and not isinstance(obj, bool):
        return key(int(obj))
    jax_key = _from_jax(obj)
    if jax_key is not None:
        return jax_key
    if isinstance(obj, (np.ndarray, Sequence)) and not isinstance(obj, (str, bytes)):
        words = np.asarray(obj)
        if words.shape == (2,) and words.dtype == np.uint32:
            return wrap_key_data(words)
        raise InvalidArgument(
            "a raw key must be a uint32 array of shape (2,) (threefry2x32, as jax.random.PRNGKey "
            f"makes); got dtype {words.dtype} and shape {words.shape}. For other implementations "
            "use jaxinit.wrap_key_data(data, impl=...)"
        )
    raise InvalidArgument(
        f"expected a key (an int seed, jaxinit.key(...), jaxinit.wrap_key_data(...), or a JAX key), "
        f"got {type(obj).__name__}: {obj!r}"
    )


def _seed(seed: Any) -> int:
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return int(seed)
    raise InvalidArgument(f"a seed must be an int, got {seed!r}")


def _from_jax(obj: Any) -> Key | None:
    """A JAX key array as a Key, or None when ``obj`` is no JAX array (JAX never imported here)."""
    jax = sys.modules.get("jax")
    if jax is None or not isinstance(obj, jax.Array):
        return None
    if jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
        if obj.shape != ():
            raise InvalidArgument(f"an initializer takes one key, got a batch of shape {obj.shape}")
        impl = str(jax.random.key_impl(obj))
        return wrap_key_data(np.asarray(jax.random.key_data(obj)), impl=impl)
    return as_key(np.asarray(obj))
