"""Re-fetch by provenance: what a file jaxinit writes carries to re-derive each tensor,
and ``jaxinit verify FILE``, which asks the server for it again and compares, tensor by
tensor.

A ``.safetensors`` file written by the client (``jaxinit get``/``jaxinit model``,
``init_model(path=...)``) carries, besides the provenance (JAX version, backend, PRNG
settings, root key, digests of the requests), the request itself (``request``: a tensor's
canonical request; ``model_request``: a model's description and options), and the digest
of each tensor's bytes as written, in an entry named for its algorithm:
``digests.xxh3-128`` (the digest every answer is checked with in transit). Files of
earlier clients verify as they did: ``digests`` holds SHA-256 digests, or the digests
their ``digest_algorithm`` entry names. A new file has no ``digests`` entry, so a client
that knows only SHA-256 skips its written digests instead of calling them changed. Verify
re-asks the request pinned to the file's JAX version and backend, so a server of another
version refuses (412 / FAILED_PRECONDITION) rather than answering other bytes.

The digests tell a file changed since it was written from an answer that differs; they
are not signatures (whoever can change the bytes can change the metadata beside them),
so a fast non-cryptographic digest serves as well as SHA-256, at several times the speed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxinit.protocol import safetensors
from jaxinit.protocol.codec import to_wire_bytes
from jaxinit.protocol.digest import ALGORITHM, new_hasher
from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.provenance import Provenance

__all__ = [
    "DIGEST_ALGORITHM",
    "DIGEST_HEX",
    "Finding",
    "digest_entries",
    "refetch_entries",
    "refetch_metadata",
    "verify_file",
]

DIGEST_ALGORITHM = ALGORITHM  # what files are written with: the protocol's own digest
DIGESTS_ENTRY = "digests."  # + an algorithm: the entry of a file's digests by that algorithm
LEGACY_ALGORITHM = "sha256"  # what the earliest clients' ``digests`` entry holds


def _xxh3(data: memoryview) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return hasher.digest().hex()


def _sha256(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# The digests this client checks, the one it prefers first.
_HASHES: dict[str, Callable[[memoryview], str]] = {DIGEST_ALGORITHM: _xxh3, LEGACY_ALGORITHM: _sha256}
DIGEST_HEX = len(_xxh3(memoryview(b"")))  # hex digits of a digest files are written with


def _digest(array: np.ndarray, algorithm: str = DIGEST_ALGORITHM) -> str:
    """The hex digest of ``array``'s little-endian bytes (as a file holds them), by ``algorithm``
    (``xxh3-128``, as files are written, or ``sha256``, as earlier clients wrote them)."""
    return _HASHES[algorithm](to_wire_bytes(array))


def digest_entries(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """The ``digests.xxh3-128`` entry: ``{name: digest}`` as compact JSON."""
    return _digest_entries({name: _digest(a) for name, a in arrays.items()})


def refetch_metadata(arrays: Mapping[str, np.ndarray], *, model_request: Mapping[str, Any]) -> dict[str, str]:
    """What a model file carries, besides its provenance, to be fetched again and checked."""
    return refetch_entries({name: _digest(a) for name, a in arrays.items()}, model_request=model_request)


def refetch_entries(digest_of: Mapping[str, str], *, model_request: Mapping[str, Any]) -> dict[str, str]:
    """:func:`refetch_metadata` from digests already known (or, to size a header before the
    bytes are there, placeholders of :data:`DIGEST_HEX` digits)."""
    return {
        "model_request": json.dumps(model_request, separators=(",", ":"), sort_keys=True),
        **_digest_entries(digest_of),
    }


def _digest_entries(digest_of: Mapping[str, str]) -> dict[str, str]:
    return {DIGESTS_ENTRY + DIGEST_ALGORITHM: json.dumps(dict(digest_of), separators=(",", ":"), sort_keys=True)}


def _written(metadata: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The digests a file was written with, by the algorithm this client prefers among
    those the file has: ``digests.<algorithm>`` entries, and an earlier client's
    ``digests`` (SHA-256, or as its ``digest_algorithm`` says)."""
    named = {key[len(DIGESTS_ENTRY) :]: value for key, value in metadata.items() if key.startswith(DIGESTS_ENTRY)}
    if "digests" in metadata:
        named.setdefault(metadata.get("digest_algorithm", LEGACY_ALGORITHM), metadata["digests"])
    if not named:
        return DIGEST_ALGORITHM, {}
    algorithm = next((a for a in _HASHES if a in named), None)
    if algorithm is None:
        raise InvalidArgument(
            f"the file's digests are {', '.join(repr(a) for a in sorted(named))}, which this client does not "
            f"know (it knows {', '.join(sorted(_HASHES))}): a file of a newer jaxinit? verify it with that version"
        )
    try:
        written = json.loads(named[algorithm])
    except ValueError:
        written = None
    if not isinstance(written, dict):
        raise InvalidArgument(f"the file's {algorithm} digests are not a JSON object")
    return algorithm, written


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
    algorithm, written = _written(metadata)
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
        findings.append(_compare(name, arrays.get(name), fetched.get(name), written.get(name), how, algorithm))
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


def _compare(
    name: str, mine: np.ndarray | None, theirs: np.ndarray | None, written: str | None, how: str, algorithm: str
) -> Finding:
    if mine is None:
        return Finding(name, False, "the server makes it, and the file lacks it")
    if theirs is None:
        return Finding(name, False, "the file has it, and the server's answer lacks it")
    digest = _digest(mine, algorithm)
    if written is not None and digest != written:
        return Finding(
            name,
            False,
            f"the file's bytes changed since jaxinit wrote them ({algorithm} {digest[:16]}, written {written[:16]})",
        )
    if mine.dtype != theirs.dtype or mine.shape != theirs.shape:
        return Finding(
            name, False, f"the file has {mine.dtype}{list(mine.shape)}, the server {theirs.dtype}{list(theirs.shape)}"
        )
    if (other := _digest(theirs, algorithm)) != digest:
        return Finding(
            name,
            False,
            f"bytes differ ({algorithm} {digest[:16]} in the file, {other[:16]} from the server, for {how})",
        )
    return Finding(name, True)
