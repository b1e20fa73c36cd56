"""A model answer as a file: the digest that names its bytes and the safetensors
metadata that says what produced them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from jaxinit.protocol.keys import Key

__all__ = ["file_metadata", "model_canonical"]


def model_canonical(layout: str, tensors: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """(canonical JSON, sha256) of a model answer: its layout and each tensor's
    (name, request digest). Two answers with the same digest have the same bytes."""
    canonical = json.dumps({"layout": layout, "tensors": [list(t) for t in tensors]}, separators=(",", ":"))
    return canonical, hashlib.sha256(canonical.encode()).hexdigest()


def file_metadata(
    identity: Mapping[str, Any],
    *,
    mode: str,
    layout: str,
    root: Key,
    threefry_partitionable: bool,
    enable_x64: bool,
    model_digest: str,
    jit: bool = False,
) -> dict[str, str]:
    """The string metadata of a model file (safetensors ``__metadata__``): what produced it.

    ``format`` is ``pt`` for the PyTorch layout, as Hugging Face tools expect; ``jit``:
    ``true`` when the model was asked as ``jax.jit(model.init)`` makes it.
    """
    return {
        "format": "pt" if layout == "torch" else "flax",
        **{
            k: str(identity.get(k, ""))
            for k in ("jaxinit_version", "jax_version", "jaxlib_version", "backend", "device_kind")
        },
        "mode": mode,
        "layout": layout,
        "root_key": json.dumps(root.to_json(), separators=(",", ":")),
        "threefry_partitionable": str(threefry_partitionable).lower(),
        "enable_x64": str(enable_x64).lower(),
        "jit": str(jit).lower(),
        "model_digest": model_digest,
    }
