"""Re-fetch by provenance: what a file jaxinit writes carries to re-derive each tensor,
and ``jaxinit verify FILE``, which asks the server for it again and compares, tensor by
tensor.

A ``.safetensors`` file written by the client (``jaxinit get``/``jaxinit model``,
``init_model(path=...)``) carries, besides the provenance (JAX version, backend, PRNG
settings, root key, digests of the requests), the request itself (``request``: a tensor's
canonical request; ``model_request``: a model's description and options) and
``digests``: the SHA-256 of each tensor's bytes as written. Verify re-asks the request
pinned to the file's JAX version and backend, so a server of another version refuses
(412 / FAILED_PRECONDITION) rather than answering other bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxinit.protocol import safetensors
from jaxinit.protocol.codec import to_wire_bytes
from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.provenance import Provenance

__all__ = ["Finding", "digests", "refetch_entries", "refetch_metadata", "verify_file"]


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(to_wire_bytes(array)).hexdigest()


def digests(arrays: Mapping[str, np.ndarray]) -> str:
    """``{name: sha256 of its little-endian bytes}`` as compact JSON (the ``digests`` entry)."""
    return refetch_entries({name: _digest(a) for name, a in arrays.items()}, model_request={})["digests"]


def refetch_metadata(arrays: Mapping[str, np.ndarray], *, model_request: Mapping[str, Any]) -> dict[str, str]:
    """What a model file carries, besides its provenance, to be fetched again and checked."""
    return refetch_entries({name: _digest(a) for name, a in arrays.items()}, model_request=model_request)


def refetch_entries(digest_of: Mapping[str, str], *, model_request: Mapping[str, Any]) -> dict[str, str]:
    """:func:`refetch_metadata` from digests already known (or, to size a header before the
    bytes are there, placeholders as long as a SHA-256)."""
    return {
        "model_request": json.dumps(model_request, separators=(",", ":"), sort_keys=True),
        "digests": json.dumps(dict(digest_of), separators=(",", ":"), sort_keys=True),
    }


@dataclass(frozen=True)
class Finding:
    """One tensor of a verified file: ``ok``, or what differs and why."""

    name: str
    ok: bool
    why: str = ""


def verify_file(client: Any, data: bytes) -> tuple[dict[str, str], list[Finding]]:
    """Re-fetch every tensor of a jaxinit ``.safetensors`` file and compare it with the
    file's; returns the file's metadata and one finding per tensor.

    Raises:
        InvalidArgument: not a safetensors file, or one that does not carry its request.
        VersionMismatch: the server is not the file's JAX version or backend.
    """
    try:
        arrays, metadata = safetensors.loads(data)
    except Exception as exc:
        raise InvalidArgument(f"not a .safetensors file jaxinit can read: {exc}") from None
    try:
        written = json.loads(metadata["digests"]) if "digests" in metadata else {}
    except ValueError:
        raise InvalidArgument("the file's digests entry is not JSON") from None
    if "model_request" in metadata:
        fetched, how = _model(client, metadata)
    elif "request" in metadata:
        fetched, how = _tensor(client, metadata, arrays)
    else:
        raise InvalidArgument(
            "this file does not carry the request that made it (no request or model_request in its metadata): "
            "only files written by the jaxinit client or CLI can be verified"
        )
    findings = []
    for name in sorted(set(arrays) | set(fetched)):
        findings.append(_compare(name, arrays.get(name), fetched.get(name), written.get(name), how))
    return metadata, findings


def _tensor(client: Any, metadata: Mapping[str, str], arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], str]:
    if len(arrays) != 1:
        raise InvalidArgument(f"a tensor's file holds one tensor; this one holds {len(arrays)}")
    try:
        canonical = json.loads(metadata["request"])
        like = Provenance(
            jax_version=metadata.get("jax_version", ""),
            backend=metadata.get("backend", ""),
            threefry_partitionable=bool(canonical["threefry_partitionable"]),
            enable_x64=bool(canonical["enable_x64"]),
            canonical_request=metadata["request"],
        )
        start, stop = canonical.get("range", (None, None))
        tensor = client.generate(
            canonical["initializer"],
            None,
            canonical["shape"],
            canonical["dtype"],
            args=canonical["args"],
            offset=start,
            count=None if start is None else stop - start,
            like=like,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"the file's request is not a jaxinit canonical request: {exc!r}") from None
    same = tensor.provenance.request_digest == metadata.get("request_digest")
    how = "the same request" if same else f"another request digest ({tensor.provenance.request_digest[:16]})"
    return {next(iter(arrays)): tensor.array}, how


def _model(client: Any, metadata: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    try:
        body = json.loads(metadata["model_request"])
        params = client.init_model(
            body["model"],
            None,
            mode=body.get("mode", "linen"),
            layout=body.get("layout", "flax"),
            fix_rng_separator=bool(body.get("fix_rng_separator", False)),
            param_dtype=body.get("param_dtype", "float32"),
            flat=True,
            like=metadata,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"the file's model_request is not a jaxinit model request: {exc!r}") from None
    same = params.metadata.get("model_digest") == metadata.get("model_digest")
    how = "the same requests" if same else f"another model digest ({params.metadata.get('model_digest', '')[:16]})"
    return dict(params), how


def _compare(name: str, mine: np.ndarray | None, theirs: np.ndarray | None, written: str | None, how: str) -> Finding:
    if mine is None:
        return Finding(name, False, "the server makes it, and the file lacks it")
    if theirs is None:
        return Finding(name, False, "the file has it, and the server's answer lacks it")
    digest = _digest(mine)
    if written is not None and digest != written:
        return Finding(
            name,
            False,
            f"the file's bytes changed since jaxinit wrote them (sha256 {digest[:16]}, written {written[:16]})",
        )
    if mine.dtype != theirs.dtype or mine.shape != theirs.shape:
        return Finding(
            name, False, f"the file has {mine.dtype}{list(mine.shape)}, the server {theirs.dtype}{list(theirs.shape)}"
        )
    if digest != _digest(theirs):
        return Finding(
            name,
            False,
            f"bytes differ (sha256 {digest[:16]} in the file, {_digest(theirs)[:16]} from the server, for {how})",
        )
    return Finding(name, True)
