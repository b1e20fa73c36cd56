"""Whole-model init: a model description expanded into its parameters, as Flax makes them.

JAX-free and shared: the client expands a description into one request per
parameter, and the server's model endpoints use the very same expansion, so
both transports and the REST download agree byte for byte.

A description is plain data (JSON/YAML-able dicts), or built with the helpers
at the bottom (``Dense(784, 256)``, ``Module(...)``). Each parameter's key is
derived from the root key as Flax derives it:

- ``linen``: ``fold_in(root, H(*module_path, n))``, where ``H`` is the first 4
  bytes (big-endian) of a SHA-1 over the path's names (UTF-8) and ``n``, the
  1-based count of parameters created in that module so far (as
  ``flax.core.scope._fold_in_static`` with lazy RNGs, Flax's default);
  ``fix_rng_separator`` mirrors ``flax_fix_rng_separator``.
- ``nnx``: ``fold_in(root, i)``, ``i`` counting every draw from the stream the
  parameters use, from 0 in constructor order: ``root`` is that stream's key. The
  root module's ``rng_streams`` names the streams of the model's ``nnx.Rngs``
  (``["params"]`` when left out; ``["default"]`` for ``nnx.Rngs(0)``,
  ``["params", "dropout"]`` for ``nnx.Rngs(params=0, dropout=1)``). Parameters draw
  from ``params``, else ``default``; a ``Dropout`` given rngs and an attention with
  ``dropout_rate > 0`` draw one count from ``dropout``, else ``default``, so with
  one shared stream they shift every later parameter's key, as in Flax. A draw
  from a stream the Rngs lacks, with no ``default`` to fall back on, is refused
  (Flax raises there too).

Every parameter consumes one count, zero-initialised biases included, exactly
as in Flax.

A ``Scan`` stacks ``length`` copies of its module on a leading axis of every
parameter; each parameter is then one request with a stacked key (see
:func:`jaxinit.stacked`):

- ``linen`` (``nn.scan(Block, variable_axes={'params': 0}, split_rngs={'params':
  True}, length=L)``): layer ``i``'s key is ``fold_in(split(root, L)[i], H(*path,
  n))``, ``path`` the full path (the scan's name included), and ``n`` the count
  in its module offset by the module's own number of parameters (Flax traces the
  scanned body twice at init, so the counts of the first trace are spent). The
  body is compiled, so each parameter has ``jit`` values (``jax.jit(init)``'s).
  ``"transform": "vmap"`` is linen's ``nn.vmap`` with the same arguments: the same keys
  with the plain counts, eager values.
- ``nnx`` (a block built by ``nnx.split_rngs(splits=L)`` over ``nnx.vmap`` of its
  constructor): the parameters' stream gives one count ``n`` to the split, and
  layer ``i``'s parameters count from 0 on the key ``split(fold_in(root, n), L)[i]``;
  eager, as vmap is.

Nested scans are refused (their key derivation is not verified).

The package by concern: :mod:`~jaxinit.protocol.model.language` (the description
language, a parser per module type), :mod:`~jaxinit.protocol.model.raw` (the raw form an
exported plan is), :mod:`~jaxinit.protocol.model.derive` (key derivation),
:mod:`~jaxinit.protocol.model.layout` (the Flax and PyTorch layouts) and
:mod:`~jaxinit.protocol.model.files` (a model file's digest and metadata).
"""

from __future__ import annotations

from jaxinit.protocol.model._base import LAYOUTS, MAX_DEPTH, MAX_NAME_CHARS, MAX_PARAMS, MAX_PATH_COMPONENTS, MODES
from jaxinit.protocol.model.derive import Param, expand, linen_fold_in
from jaxinit.protocol.model.files import file_metadata, model_canonical
from jaxinit.protocol.model.language import MODULE_TYPES
from jaxinit.protocol.model.layout import Output, model_prng, nest, outputs
from jaxinit.protocol.model.raw import plan_jit

__all__ = [
    "LAYOUTS",
    "MAX_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_PARAMS",
    "MAX_PATH_COMPONENTS",
    "MODES",
    "MODULE_TYPES",
    "Param",
    "Output",
    "expand",
    "file_metadata",
    "linen_fold_in",
    "model_canonical",
    "model_prng",
    "nest",
    "outputs",
    "plan_jit",
]
