"""The contract client and server share: JAX-free, imported by both sides.

Everything a jaxinit client and server must agree on lives here, once:

- :mod:`~jaxinit.protocol.catalog`: the initializers, their arguments and how they are checked;
- :mod:`~jaxinit.protocol.codec`: dtypes and the little-endian byte codec;
- :mod:`~jaxinit.protocol.keys`: keys, key implementations and ``fold_in``;
- :mod:`~jaxinit.protocol.errors`: the error hierarchy and its one HTTP / gRPC table;
- :mod:`~jaxinit.protocol.digest`: the digest of the bytes sent;
- :mod:`~jaxinit.protocol.provenance`: the typed provenance record;
- :mod:`~jaxinit.protocol.wire`: media types, header names, gRPC metadata keys;
- :mod:`~jaxinit.protocol.model`: the model description language, its expansion into
  tensors and keys, the Flax and PyTorch layouts and model files (``expansion``: its old
  name, kept for one release);
- :mod:`~jaxinit.protocol.values`: how a caller's ints and shapes are checked and quoted in
  messages;
- :mod:`~jaxinit.protocol.safetensors`: the safetensors header;
- :mod:`~jaxinit.protocol.frames`: the framed multi-tensor HTTP body (a model in one response).

The server imports nothing else of the ``jaxinit`` package but the generated stubs
(``jaxinit.v1``); a test holds it to that.

>>> from jaxinit.protocol import CATALOG, Key
>>> CATALOG["lecun_normal"].uses_key
True
>>> Key(seed=0).impl
'threefry2x32'
"""

from __future__ import annotations

# The one version of the distribution (client and server ship together); pyproject.toml
# reads it from here.
__version__ = "0.3.0"

from jaxinit.protocol import (
    catalog,
    codec,
    digest,
    errors,
    expansion,
    frames,
    keys,
    model,
    provenance,
    safetensors,
    values,
    wire,
)
from jaxinit.protocol.catalog import CATALOG, InitializerSpec, bind_arguments, lookup
from jaxinit.protocol.codec import DTYPE_NAMES, DTYPES
from jaxinit.protocol.errors import ERROR_TABLE, JaxinitError, mapping_for
from jaxinit.protocol.keys import DEFAULT_IMPL, KEY_IMPLS, Key
from jaxinit.protocol.provenance import Provenance

__all__ = [
    "CATALOG",
    "__version__",
    "DEFAULT_IMPL",
    "DTYPES",
    "DTYPE_NAMES",
    "ERROR_TABLE",
    "KEY_IMPLS",
    "InitializerSpec",
    "JaxinitError",
    "Key",
    "Provenance",
    "bind_arguments",
    "catalog",
    "codec",
    "digest",
    "errors",
    "expansion",
    "frames",
    "keys",
    "lookup",
    "mapping_for",
    "model",
    "provenance",
    "safetensors",
    "values",
    "wire",
]
