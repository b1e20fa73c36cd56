"""Keys as jaxinit carries them: a seed or raw key data, with a key implementation name.

JAX-free. Turns whatever a user passes as ``key`` (an int seed, a
:class:`Key`, a raw uint32 key array, a JAX key when JAX is installed) into one
:class:`Key`; the server turns that into a JAX key.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxinit.protocol.errors import InvalidArgument

__all__ = ["DEFAULT_IMPL", "KEY_IMPLS", "MAX_FOLD_IN", "Key", "as_key", "fold_in", "key", "wrap_key_data"]

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
MAX_FOLD_IN = 64  # fold_in steps one key may carry


@dataclass(frozen=True)
class Key:
    """A PRNG key: exactly one of ``seed`` or ``data``, and an implementation name.

    ``Key(seed=s, impl=i)`` means ``jax.random.key(s, impl=i)`` on the server;
    ``Key(data=d, impl=i)`` means ``jax.random.wrap_key_data(d, impl=i)``.
    ``fold_in=(a, b)`` then means ``fold_in(fold_in(that key, a), b)`` (uint32 each),
    as Flax derives a parameter's key from the root key.
    """

    seed: int | None = None
    data: tuple[int, ...] | None = None
    impl: str = DEFAULT_IMPL
    fold_in: tuple[int, ...] = ()

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

    def to_json(self) -> dict[str, Any]:
        """The key as the REST API and canonical requests write it.

        >>> Key(seed=3).to_json()
        {'seed': 3, 'impl': 'threefry2x32'}
        """
        out: dict[str, Any] = {"seed": self.seed} if self.seed is not None else {"data": list(self.data or ())}
        out["impl"] = self.impl
        if self.fold_in:  # absent when empty, so digests of plain keys stay as they were
            out["fold_in"] = list(self.fold_in)
        return out


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
    Key(seed=0, data=None, impl='threefry2x32', fold_in=(7,))
    """
    base = as_key(base)
    if not isinstance(data, numbers.Integral) or isinstance(data, bool):
        raise InvalidArgument(f"fold_in data must be an int, got {data!r}")
    # jax.random.fold_in takes the data as a uint32 and refuses ints outside its range;
    # Key checks the same range.
    return Key(seed=base.seed, data=base.data, impl=base.impl, fold_in=(*base.fold_in, int(data)))


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
