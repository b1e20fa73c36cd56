"""jaxinit: JAX initializers, bit-identical to local JAX, without JAX.

>>> import jaxinit
>>> sorted(jaxinit.CATALOG)[:3]
['constant', 'delta_orthogonal', 'glorot_normal']

Names are loaded when first used (PEP 562): ``import jaxinit.protocol`` (what the server
imports) does not load the client, its transports or ``jaxinit.models``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jaxinit.protocol import __version__

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "CATALOG": "jaxinit.protocol.catalog",
    "DTYPE_NAMES": "jaxinit.protocol.codec",
    "to_float32": "jaxinit.protocol.codec",
    "KEY_IMPLS": "jaxinit.protocol.keys",
    "Key": "jaxinit.protocol.keys",
    "fold_in": "jaxinit.protocol.keys",
    "split": "jaxinit.protocol.keys",
    "stacked": "jaxinit.protocol.keys",
    "key": "jaxinit.protocol.keys",
    "wrap_key_data": "jaxinit.protocol.keys",
    "Provenance": "jaxinit.protocol.provenance",
    "IntegrityError": "jaxinit.protocol.errors",
    "InternalError": "jaxinit.protocol.errors",
    "Interrupted": "jaxinit.protocol.errors",
    "InvalidArgument": "jaxinit.protocol.errors",
    "JaxError": "jaxinit.protocol.errors",
    "JaxinitError": "jaxinit.protocol.errors",
    "NotAcceptable": "jaxinit.protocol.errors",
    "Overloaded": "jaxinit.protocol.errors",
    "PermissionDenied": "jaxinit.protocol.errors",
    "ProtocolError": "jaxinit.protocol.errors",
    "ServerUnavailable": "jaxinit.protocol.errors",
    "TooLarge": "jaxinit.protocol.errors",
    "Unauthenticated": "jaxinit.protocol.errors",
    "UnknownDtype": "jaxinit.protocol.errors",
    "UnknownInitializer": "jaxinit.protocol.errors",
    "AsyncClient": "jaxinit._client",
    "AsyncInitializer": "jaxinit._client",
    "Client": "jaxinit._client",
    "Initializer": "jaxinit._client",
    "ModelParams": "jaxinit._client",
    "Request": "jaxinit._types",
    "Tensor": "jaxinit._types",
}
_SUBMODULES = ("models", "protocol")

__all__ = [
    "AsyncClient",
    "AsyncInitializer",
    "CATALOG",
    "Client",
    "DTYPE_NAMES",
    "Initializer",
    "IntegrityError",
    "InternalError",
    "Interrupted",
    "InvalidArgument",
    "JaxError",
    "JaxinitError",
    "KEY_IMPLS",
    "Key",
    "ModelParams",
    "NotAcceptable",
    "Overloaded",
    "PermissionDenied",
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
    "protocol",
    "split",
    "stacked",
    "to_float32",
    "wrap_key_data",
]
assert set(__all__) == {*_EXPORTS, *_SUBMODULES, "__version__"}

if TYPE_CHECKING:
    from jaxinit import models, protocol
    from jaxinit._client import AsyncClient, AsyncInitializer, Client, Initializer, ModelParams
    from jaxinit._types import Request, Tensor
    from jaxinit.protocol.catalog import CATALOG
    from jaxinit.protocol.codec import DTYPE_NAMES, to_float32
    from jaxinit.protocol.errors import (
        IntegrityError,
        InternalError,
        Interrupted,
        InvalidArgument,
        JaxError,
        JaxinitError,
        NotAcceptable,
        Overloaded,
        PermissionDenied,
        ProtocolError,
        ServerUnavailable,
        TooLarge,
        Unauthenticated,
        UnknownDtype,
        UnknownInitializer,
    )
    from jaxinit.protocol.keys import KEY_IMPLS, Key, fold_in, key, split, stacked, wrap_key_data
    from jaxinit.protocol.provenance import Provenance


def __getattr__(name: str) -> Any:
    from jaxinit._annotations import resolve

    if name in _SUBMODULES:
        module = importlib.import_module(f"jaxinit.{name}")
        if name == "models":  # the builder's functions, as help() shows them
            for public in module.__all__:
                resolve(getattr(module, public))
    elif name in _EXPORTS:
        module = getattr(importlib.import_module(_EXPORTS[name]), name)
        resolve(module)  # real annotations in signatures, not strings
        if _EXPORTS[name] == "jaxinit._client":  # and what a client's calls hand back
            for returned in ("Initializer", "AsyncInitializer", "ModelParams", "Tensor"):
                resolve(getattr(importlib.import_module(_EXPORTS[returned]), returned))
    else:
        raise AttributeError(f"module 'jaxinit' has no attribute {name!r}")
    globals()[name] = module  # loaded once
    return module


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
