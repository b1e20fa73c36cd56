"""How an answer is written in each media type: a tensor as raw bytes, raw bytes with their
digest, a .npy file or JSON; a model as .safetensors, a streamed .npz or framed tensors
(each its header, bytes and digest, as the gRPC stream frames them). Nothing here decides
what to make, only how to write it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import zipfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from jaxinit.protocol import frames, wire
from jaxinit.protocol.codec import is_bits_type, npy_dtype
from jaxinit.protocol.digest import DIGEST_BYTES
from jaxinit.protocol.errors import InternalError, InvalidArgument, JaxinitError, NotAcceptable
from jaxinit.protocol.provenance import Provenance
from jaxinit.protocol.wire import DIGESTED, JSON, NPY, NPZ, OCTET, SAFETENSORS, TENSORS
from jaxinit_server import jsonio
from jaxinit_server.core import ResolvedModel, Service, TensorStream
from jaxinit_server.core.admission import Ticket
from jaxinit_server.core.delivery import STREAM, Delivery
from jaxinit_server.core.errors import as_domain_error
from jaxinit_server.core.models import PlannedModel

__all__ = [
    "MAX_HEADER_CANONICAL",
    "MEDIA_TYPES",
    "MODEL_MEDIA_TYPES",
    "ReleasingResponse",
    "model_frames",
    "model_npz",
    "model_safetensors",
    "negotiate",
    "npz_storable",
    "provenance_header",
    "tensor_headers",
    "tensor_response",
]

# What a tensor can be answered as (the first: when the client has no preference). DIGESTED,
# the raw bytes then their 16-byte digest, is what the jaxinit client asks for.
MEDIA_TYPES = (OCTET, NPY, JSON, DIGESTED)
MODEL_MEDIA_TYPES = (SAFETENSORS, NPZ, JSON, TENSORS)
log = logging.getLogger("jaxinit_server.rest")


def negotiate(accept: str | None, offered: tuple[str, ...] = MEDIA_TYPES) -> str:
    """The media type to answer with, from an Accept header (q-values honoured); the
    first one offered when the client has no preference."""
    if not accept:
        return offered[0]
    best, best_q = None, 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        candidates = offered if media in ("*/*", "application/*") else (media,)
        for candidate in candidates:
            if candidate in offered and (q > best_q or (q == best_q and best is None)):
                best, best_q = candidate, q
    if best is None:
        raise NotAcceptable(f"cannot answer with {accept!r}; this endpoint produces {', '.join(offered)}")
    return best


# The most characters of the canonical request X-Jaxinit-Provenance carries: a request
# with a large value (a `constant` of megabytes) would otherwise make a header of megabytes,
# which proxies and HTTP clients refuse (nginx answers 502 past its 4-8 KiB header buffer).
MAX_HEADER_CANONICAL = 2048


def provenance_header(provenance: Provenance) -> str:
    """The provenance as the header's compact JSON. A canonical request over
    :data:`MAX_HEADER_CANONICAL` characters is left out (``canonical_request`` empty, and
    ``canonical_request_omitted`` its length); ``request_digest``, its sha256, stays."""
    fields = provenance.as_dict()
    if len(provenance.canonical_request) > MAX_HEADER_CANONICAL:
        fields["canonical_request"] = ""
        fields["canonical_request_omitted"] = len(provenance.canonical_request)
    return json.dumps(fields, separators=(",", ":"))


def tensor_headers(tensor: TensorStream) -> dict[str, str]:
    return {
        wire.SHAPE_HEADER: ",".join(str(d) for d in tensor.shape),
        wire.DTYPE_HEADER: tensor.dtype,
        wire.BYTE_ORDER_HEADER: "little",
        wire.OFFSET_HEADER: str(tensor.resolved.start),
        wire.COUNT_HEADER: str(tensor.resolved.stop - tensor.resolved.start),
        wire.REQUEST_DIGEST_HEADER: tensor.provenance.request_digest,
        wire.PROVENANCE_HEADER: provenance_header(tensor.provenance),
        wire.CACHE_HEADER: tensor.cache,
    }


async def tensor_response(tensor: TensorStream, media: str, headers: dict[str, str], chunk_bytes: int) -> Response:
    """``tensor`` written as ``media``, with its headers after ``headers``; delivered into a
    shared-memory region (when the request asked for one and it has room), its headers,
    the region's name and the digest of its bytes, and no body."""
    region = await tensor.region()
    headers = {**headers, **tensor_headers(tensor)}
    if region is not None:
        headers[wire.REGION_HEADER] = region
        headers[wire.DIGEST_ALGORITHM_HEADER] = tensor.digest_algorithm
        headers[wire.DIGEST_HEADER] = tensor.digest().hex()
        return Response(b"", media_type=OCTET, headers=headers)
    if media == JSON:
        array = await tensor.array()
        body = await asyncio.to_thread(lambda: jsonio.dumps(_json_body(tensor, array)))
        return Response(body, media_type=JSON, headers=headers)
    prefix, suffix = b"", False
    if media == NPY:
        prefix = _npy_header(tensor)
    elif media == DIGESTED:
        suffix = True
        headers[wire.DIGEST_ALGORITHM_HEADER] = tensor.digest_algorithm
    headers["Content-Length"] = str(len(prefix) + tensor.nbytes + (DIGEST_BYTES if suffix else 0))
    if tensor.nbytes <= chunk_bytes:
        # One chunk: the whole body at once (one write instead of a stream's several).
        body = b"".join([bytes(data) async for data in _bytes(tensor, chunk_bytes, prefix, suffix)])
        return Response(body, media_type=media, headers=headers)
    return StreamingResponse(_bytes(tensor, chunk_bytes, prefix, suffix), media_type=media, headers=headers)


async def _bytes(
    tensor: TensorStream, chunk_bytes: int, prefix: bytes, digest: bool
) -> AsyncIterator[bytes | memoryview]:
    if prefix:
        yield prefix
    async for _, data in tensor.chunks(chunk_bytes):
        yield data
    if digest:
        yield tensor.digest()


def _npy_header(tensor: TensorStream) -> bytes:
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(npy_dtype(tensor.dtype).newbyteorder("<"))
    header = {"descr": descr, "fortran_order": False, "shape": tensor.sent_shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _json_body(tensor: TensorStream, array: np.ndarray) -> dict[str, Any]:
    """Nested lists; complex numbers as [real, imag]; non-finite floats as "nan"/"inf"/"-inf"."""
    array = jsonio.json_numbers(array)
    if array.dtype.kind == "c":
        array = np.stack([array.real, array.imag], axis=-1)
    data: Any = array.tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        data = _map_nested(data, lambda x: x if np.isfinite(x) else repr(x))
    resolved = tensor.resolved
    return {
        "shape": list(tensor.shape),
        "dtype": tensor.dtype,
        "offset": resolved.start,
        "count": resolved.stop - resolved.start,
        "data": data,
        "provenance": tensor.provenance.as_dict(),
    }


def _map_nested(data: Any, fn: Any) -> Any:
    if isinstance(data, list):
        return [_map_nested(d, fn) for d in data]
    return fn(data)


async def model_safetensors(
    service: Service, model: ResolvedModel | PlannedModel, head: bytes, ticket: Ticket
) -> AsyncIterator[bytes | memoryview]:
    """A model as .safetensors: ``head`` (its header), then each tensor's bytes in order."""
    yield head
    async for name, tensor in service.generate_model(model, ticket=ticket):
        if isinstance(tensor, JaxinitError):  # the status is sent: only a cut body can say it
            raise RuntimeError(f"{name}: {tensor.message}") from tensor
        async for _, data in tensor.chunks(service.limits.chunk_bytes):
            yield data


def npz_storable(model: ResolvedModel) -> None:
    """Raise InvalidArgument when a tensor's dtype has no .npy form numpy reads back."""
    for out in model.outputs:
        if is_bits_type(out.dtype):
            raise InvalidArgument(
                f"{out.name}: .npy/.npz cannot store {out.dtype} (numpy reads it back as raw void "
                "bytes); ask for application/safetensors"
            )


class _Sink(io.RawIOBase):
    """A write-only stream whose bytes are taken out as they come (zipfile writes into it)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


async def model_npz(service: Service, model: ResolvedModel | PlannedModel, ticket: Ticket) -> AsyncIterator[bytes]:
    """A .npz of the model, streamed: an uncompressed zip whose sizes follow each member
    (data descriptors), so no tensor is held whole; numpy's ``np.load`` reads it."""
    sink = _Sink()
    archive = zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
    async for name, tensor in service.generate_model(model, ticket=ticket):
        if isinstance(tensor, JaxinitError):  # the status is sent: only a cut body can say it
            raise RuntimeError(f"{name}: {tensor.message}") from tensor
        with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
            member.write(_npy_header(tensor))
            async for _, data in tensor.chunks(service.limits.chunk_bytes):
                member.write(data)
                yield sink.drain()
        yield sink.drain()
    archive.close()
    yield sink.drain()


class ReleasingResponse(StreamingResponse):
    """A streamed body that gives ``release`` back however the response ends: sent whole,
    failed, or a caller gone after the status line, before the body's own generator ever
    ran (it then never reaches its ``finally``, and a background task is skipped when
    the send fails)."""

    def __init__(self, content: AsyncIterator[bytes | memoryview], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def frame_header(name: str, tensor: TensorStream, model_bytes: int, region: str | None, chunk_bytes: int) -> bytes:
    """A tensor's ``h`` frame payload: the gRPC ``TensorHeader``'s fields as JSON, and its name."""
    resolved = tensor.resolved
    header = {
        "name": name,
        "shape": list(tensor.shape),
        "dtype": tensor.dtype,
        "byte_order": "little",
        "total_bytes": tensor.nbytes,
        "chunk_bytes": chunk_bytes,
        "offset": resolved.start,
        "count": resolved.stop - resolved.start,
        "digest_algorithm": tensor.digest_algorithm,
        "model_bytes": model_bytes,
        "cache": tensor.cache,
        "region": region or "",
        "provenance": tensor.provenance.as_dict(),
    }
    return json.dumps(header, separators=(",", ":")).encode()


async def model_frames(
    service: Service, model: PlannedModel, ticket: Ticket, delivery: Delivery = STREAM
) -> AsyncIterator[bytes | memoryview]:
    """A model as framed tensors (see :mod:`jaxinit.protocol.frames`): each tensor's header,
    its bytes and their digest, in order, or an error frame in its place; delivered into
    regions (a same-host caller's shared memory), each tensor's bytes in a region the header names
    (in the stream when shared memory has no room). An error after the status line ends
    the body with an ``z`` frame that carries it."""
    chunk_bytes = service.limits.chunk_bytes
    try:
        async for name, tensor in service.generate_model(model, ticket=ticket, delivery=delivery):
            if isinstance(tensor, JaxinitError):
                yield frames.frame(frames.ERROR, frames.error_payload(tensor, name))
                continue
            region = await tensor.region()
            yield frames.frame(frames.HEADER, frame_header(name, tensor, model.model.nbytes, region, chunk_bytes))
            if region is None:
                async for _, data in tensor.chunks(chunk_bytes):
                    yield frames.prefix(frames.DATA, len(data))
                    yield data
            yield frames.frame(frames.DIGEST, tensor.digest())
    except Exception as exc:  # the status is sent: the body's last frame says what ended it
        error = as_domain_error(exc)
        if error is None:
            log.error("internal error in a model stream", exc_info=exc)
            error = InternalError("internal server error")
        yield frames.frame(frames.END, frames.error_payload(error))
        return
    yield frames.frame(frames.END, b"")
