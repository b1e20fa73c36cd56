"""jaxinit: JAX initializers, bit-identical to local JAX, without JAX.

>>> import jaxinit
>>> sorted(jaxinit.CATALOG)[:3]
['constant', 'delta_orthogonal', 'glorot_normal']
"""

from __future__ import annotations

from jaxinit import models
from jaxinit._catalog import CATALOG
from jaxinit._client import AsyncClient, AsyncInitializer, Client, Initializer, ModelParams
from jaxinit._codec import DTYPE_NAMES
from jaxinit._errors import (
    IntegrityError,
    InternalError,
    Interrupted,
    InvalidArgument,
    JaxError,
    JaxinitError,
    NotAcceptable,
    Overloaded,
    ProtocolError,
    ServerUnavailable,
    TooLarge,
    Unauthenticated,
    UnknownDtype,
    UnknownInitializer,
)
from jaxinit._keys import KEY_IMPLS, Key, fold_in, key, wrap_key_data
from jaxinit._types import Provenance, Request, Tensor

__version__ = "0.1.0"

__all__ = [
    "CATALOG",
    "DTYPE_NAMES",
    "KEY_IMPLS",
    "AsyncClient",
    "AsyncInitializer",
    "Client",
    "Initializer",
    "IntegrityError",
    "InternalError",
    "Interrupted",
    "InvalidArgument",
    "JaxError",
    "JaxinitError",
    "Key",
    "ModelParams",
    "NotAcceptable",
    "Overloaded",
    "ProtocolError",
    "Provenance",
    "Request",
    "ServerUnavailable",
    "Tensor",
    "TooLarge",
    "Unauthenticated",
    "UnknownDtype",
    "UnknownInitializer",
    "__version__",
    "fold_in",
    "key",
    "models",
    "wrap_key_data",
]
