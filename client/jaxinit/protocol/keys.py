"""Keys as jaxinit carries them: a seed or raw key data, with a key implementation name.

JAX-free. Turns whatever a user passes as ``key`` (an int seed, a
:class:`Key`, a raw uint32 key array, a JAX key when JAX is installed) into one
:class:`Key`; the server turns that into a JAX key.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.values import is_int, quote

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


def _uint32(x: Any) -> bool:
    return is_int(x) and 0 <= x < 2**32


def _fold_in_step(step: tuple[Any, ...]) -> Step:
    if len(step) == 2 and _uint32(step[1]):
        return ("fold_in", int(step[1]))
    raise InvalidArgument(f"fold_in takes a uint32 (0 <= x < 2**32), got {quote(step[1:], 40)}")


def _split_step(step: tuple[Any, ...]) -> Step:
    if len(step) == 3 and _uint32(step[1]) and _uint32(step[2]) and 1 <= step[1] <= MAX_SPLIT and step[2] < step[1]:
        return ("split", int(step[1]), int(step[2]))
    num, index = (*step[1:], None, None)[:2]
    raise InvalidArgument(
        f"split(key, num)[index] needs 1 <= num <= {MAX_SPLIT} and 0 <= index < num, got "
        f"num={quote(num, 20)}, index={quote(index, 20)}"
    )


def _stack_step(step: tuple[Any, ...]) -> Step:
    if len(step) == 2 and _uint32(step[1]) and 1 <= step[1] <= MAX_STACK:
        return ("stack", int(step[1]))
    raise InvalidArgument(f"a stack step is stack num, 1 <= num <= {MAX_STACK}, got {quote(step[1:], 20)}")


# Step name -> its check, which returns the step with plain ints.
_STEPS = {"fold_in": _fold_in_step, "split": _split_step, "stack": _stack_step}


def _check_step(step: Any) -> Step:
    check = _STEPS.get(step[0]) if isinstance(step, tuple) and step and isinstance(step[0], str) else None
    if check is None:
        raise InvalidArgument(
            "a key derivation step is fold_in (a uint32, 0 <= x < 2**32), split [num, index] or stack num, got "
            f"{quote(step, 60)}"
        )
    return check(step)


def _check_steps(steps: tuple[Any, ...]) -> tuple[Step, ...]:
    """Every step checked, and the key's limits on them: how many, how many split and
    stack steps, how many slices the stack steps make."""
    if len(steps) > MAX_FOLD_IN:
        raise InvalidArgument(
            f"a key carries at most {MAX_FOLD_IN} derivation steps (fold_in, split and stack), got {len(steps)}"
        )
    checked = tuple(_check_step(step) for step in steps)
    if sum(step[0] != "fold_in" for step in checked) > MAX_SPLIT_STEPS:
        raise InvalidArgument(f"a key carries at most {MAX_SPLIT_STEPS} split and stack steps")
    stack = [step[1] for step in checked if step[0] == "stack"]
    if math.prod(stack) > MAX_STACK:
        raise InvalidArgument(
            f"a key's stack steps make at most {MAX_STACK} slices in all, got {' x '.join(map(str, stack))}"
        )
    return checked


@dataclass(frozen=True, init=False)
class Key:
    """A PRNG key: exactly one of ``seed`` or ``data``, an implementation name, and the
    steps that derive the key used from it.

    ``Key(seed=s, impl=i)`` means ``jax.random.key(s, impl=i)`` on the server;
    ``Key(data=d, impl=i)`` means ``jax.random.wrap_key_data(d, impl=i)``. ``steps`` then
    derive the key used, in order: ``("fold_in", x)`` is ``jax.random.fold_in(key, x)``
    (uint32 ``x``, as Flax derives a parameter's key from the root key),
    ``("split", num, i)`` is ``jax.random.split(key, num)[i]`` (as ``nn.scan`` and
    ``nnx.split_rngs`` derive a layer's key), and ``("stack", num)`` makes the key a batch,
    all of ``jax.random.split(key, num)``, each later step applying to every key of it: a
    tensor made with a batch key has shape ``(num, *shape)``, slice ``i`` made with key
    ``i`` (``jax.vmap`` of the initializer over the keys; how ``nn.scan`` and ``nnx.vmap``
    initialise stacked layers). :func:`fold_in`, :func:`split` and :func:`stacked` build them.

    The steps are one list. The wire forms spell its leading fold_in steps as a ``fold_in``
    list and the rest as ``derive`` steps (so that the digests of keys made before
    ``derive`` existed stay as they were); ``fold_in=`` and ``derive=`` here read either
    spelling, and :attr:`fold_in` and :attr:`derive` give them back.
    """

    seed: int | None
    data: tuple[int, ...] | None
    impl: str
    steps: tuple[Step, ...]

    def __init__(
        self,
        seed: int | None = None,
        data: tuple[int, ...] | None = None,
        impl: str = DEFAULT_IMPL,
        fold_in: Sequence[int] = (),
        derive: Sequence[Step] = (),
        *,
        steps: Sequence[Step] = (),
    ) -> None:
        if impl not in KEY_IMPLS:
            raise InvalidArgument(f"unknown key implementation {quote(impl, 40)}; known: {', '.join(KEY_IMPLS)}")
        if (seed is None) == (data is None):
            raise InvalidArgument("a key needs exactly one of a seed or key data")
        if seed is not None:
            _check_seed(seed)
        if data is not None:
            data = _check_data(data, impl)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "impl", impl)
        object.__setattr__(self, "steps", _check_steps((*(("fold_in", x) for x in fold_in), *derive, *steps)))

    @property
    def fold_in(self) -> tuple[int, ...]:
        """The leading fold_in steps' values: the wire forms' ``fold_in`` list."""
        return tuple(step[1] for step in self.steps[: self._lead])

    @property
    def derive(self) -> tuple[Step, ...]:
        """The steps after the leading fold_ins: the wire forms' ``derive`` steps."""
        return self.steps[self._lead :]

    @property
    def _lead(self) -> int:
        return next((i for i, step in enumerate(self.steps) if step[0] != "fold_in"), len(self.steps))

    @property
    def stack(self) -> tuple[int, ...]:
        """The leading axes a tensor made with this key has: each stack step's num, in order
        (empty for a single key)."""
        return tuple(step[1] for step in self.steps if step[0] == "stack")

    def then(self, step: Step) -> Key:
        """This key with one more step (checked by the key itself)."""
        return Key(seed=self.seed, data=self.data, impl=self.impl, steps=(*self.steps, step))

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


def _check_seed(seed: Any) -> None:
    if not is_int(seed):
        raise InvalidArgument(f"a seed must be an int, got {quote(seed, 40)}")
    if not INT64_MIN <= seed <= INT64_MAX:
        raise InvalidArgument(f"seed {str(seed)[:40]} does not fit in int64, the range jax.random.key accepts")


def _check_data(data: Any, impl: str) -> tuple[int, ...]:
    words = KEY_IMPLS[impl]
    if len(data) != words or not all(_uint32(w) for w in data):
        raise InvalidArgument(f"{impl} key data must be {words} uint32 words, got {quote(list(data))}")
    return tuple(int(w) for w in data)


def step_json(step: Step) -> dict[str, Any]:
    """One step in the JSON form of ``derive``: ``{"fold_in": x}``, ``{"split": [num, i]}``, ``{"stack": num}``."""
    if step[0] == "split":
        return {"split": [step[1], step[2]]}
    return {step[0]: step[1]}


def derive_from_json(items: Any) -> tuple[Step, ...]:
    """``derive`` steps from their JSON form ``[{"fold_in": 3}, {"split": [4, 2]}, {"stack": 8}]``."""
    if not isinstance(items, list) or len(items) > MAX_FOLD_IN:
        raise InvalidArgument(f"derive must be a list of at most {MAX_FOLD_IN} steps, got {quote(items, 60)}")
    return tuple(_step_from_json(item) for item in items)


def _step_from_json(item: Any) -> Step:
    name = next(iter(item), None) if isinstance(item, dict) and len(item) == 1 else None
    if name == "split" and isinstance(item["split"], list):
        return _check_step(("split", *item["split"]))
    if name in ("fold_in", "stack"):
        return _check_step((name, item[name]))
    raise InvalidArgument(
        f'a derive step is {{"fold_in": x}}, {{"split": [num, index]}} or {{"stack": num}}, got {quote(item, 60)}'
    )


def derive_from_text(text: str) -> tuple[Step, ...]:
    """``derive`` steps from their text form ``fold_in:3,split:4:2,stack:8`` (see :meth:`Key.derive_text`)."""
    steps = []
    for token in filter(None, text.split(",")):
        name, *numbers_ = token.strip().split(":")
        try:
            values = [int(n) for n in numbers_]
        except ValueError:
            raise InvalidArgument(
                f"a derive step is fold_in:X, split:NUM:INDEX or stack:NUM, got {quote(token, 40)}"
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
        raise InvalidArgument(f"key data must be a 1-D sequence of uint32 words, got {quote(data)}")
    return Key(data=tuple(int(w) for w in words.tolist()), impl=impl or DEFAULT_IMPL)


def fold_in(base: Any, data: int) -> Key:
    """Like ``jax.random.fold_in(key, data)``: ``base`` with one more uint32 folded in.

    >>> fold_in(key(0), 7)
    Key(seed=0, data=None, impl='threefry2x32', steps=(('fold_in', 7),))
    """
    start = as_key(base)
    if not is_int(data):
        raise InvalidArgument(f"fold_in data must be an int, got {quote(data)}")
    # jax.random.fold_in takes the data as a uint32 and refuses ints outside its range;
    # the step checks the same range.
    return start.then(("fold_in", int(data)))


def split(base: Any, num: int = 2) -> tuple[Key, ...]:
    """Like ``jax.random.split(key, num)``: ``num`` keys, the i-th being
    ``jax.random.split(base, num)[i]`` on the server (nothing is computed here).

    >>> split(key(0), 3)[1].derive
    (('split', 3, 1),)
    """
    start = as_key(base)
    if not is_int(num) or not 1 <= num <= MAX_SPLIT:
        raise InvalidArgument(f"split takes 1 <= num <= {MAX_SPLIT}, got {quote(num)}")
    return tuple(start.then(("split", int(num), i)) for i in range(int(num)))


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
    start = as_key(base)
    if not is_int(num) or not 1 <= num <= MAX_STACK:
        raise InvalidArgument(f"stacked takes 1 <= num <= {MAX_STACK}, got {quote(num)}")
    return start.then(("stack", int(num)))


def as_key(obj: Any) -> Key:
    """Turn what a user passes as an initializer's ``key`` into a :class:`Key`.

    Accepts an int seed, a :class:`Key`, a raw uint32 key array of 2 words (as
    ``jax.random.PRNGKey`` makes, read as threefry2x32), or a JAX key array.

    Raises:
        InvalidArgument: for anything else, with what was expected.
    """
    if isinstance(obj, Key):
        return obj
    if is_int(obj):
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
        f"got {type(obj).__name__}: {quote(obj)}"
    )


def _seed(seed: Any) -> int:
    if is_int(seed):
        return int(seed)
    raise InvalidArgument(f"a seed must be an int, got {quote(seed)}")


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
