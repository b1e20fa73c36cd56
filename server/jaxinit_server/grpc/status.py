"""gRPC status plumbing: a domain error becomes its status code (from the one error table),
its type and retry-after in the trailing metadata; request ids and callers from metadata."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from jaxinit.protocol.errors import InternalError, JaxinitError, mapping_for
from jaxinit.protocol.wire import ERROR_TYPE_KEY, JAX_VERSION_HEADER, REPLICA_HEADER, REQUEST_ID_HEADER, RETRY_AFTER_KEY
from jaxinit_server.auth import KeyRing, caller, grpc_authorization
from jaxinit_server.core.errors import as_domain_error
from jaxinit_server.telemetry import Call, request_id_from

__all__ = ["abort", "caller_of", "domain_error", "echo_request_id", "observed"]

log = logging.getLogger("jaxinit_server.grpc")


def domain_error(exc: BaseException) -> JaxinitError:
    """``exc`` as a domain error; anything unexpected is logged and becomes InternalError."""
    if (error := as_domain_error(exc)) is not None:
        return error
    log.error("internal error", exc_info=exc)
    return InternalError("internal server error")


async def abort(context: grpc.aio.ServicerContext, error: JaxinitError) -> None:
    """End the call with ``error``'s status (from the one error table) and its type."""
    metadata = [(ERROR_TYPE_KEY, type(error).__name__)]
    if (retry_after := getattr(error, "retry_after", None)) is not None:
        metadata.append((RETRY_AFTER_KEY, f"{retry_after:g}"))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(grpc.StatusCode[mapping_for(error).grpc_code], error.message)


async def echo_request_id(context: grpc.aio.ServicerContext, replica: str) -> str:
    """The caller's x-request-id (or a new one), echoed back in the initial metadata with the
    name of the replica that answers."""
    given = dict(context.invocation_metadata() or ()).get(REQUEST_ID_HEADER)
    request_id = request_id_from(given if isinstance(given, str) else None)
    metadata = ((REQUEST_ID_HEADER, request_id),) + (((REPLICA_HEADER, replica),) if replica else ())
    await context.send_initial_metadata(metadata)
    return request_id


def pin_of(context: grpc.aio.ServicerContext) -> str | None:
    """The call's ``x-jaxinit-jax-version`` metadata (the version it is pinned to), if any."""
    for key, value in context.invocation_metadata() or ():
        if key == JAX_VERSION_HEADER:
            return value if isinstance(value, str) else None
    return None


def caller_of(context: grpc.aio.ServicerContext, keyring: KeyRing | None) -> str:
    """Whom admission charges this call to: its API key with auth on, else its channel."""
    if keyring is None or not keyring.enabled:
        return caller(None, None, context.peer())
    return caller(keyring, grpc_authorization(context.invocation_metadata()), context.peer())


@contextlib.asynccontextmanager
async def observed(context: grpc.aio.ServicerContext, call: Call) -> AsyncIterator[None]:
    """The telemetry envelope of a call (REST's ``observe``): a failure ends the call with
    its domain error's status; the record is closed however the call ends (a caller that
    goes away or stops reading included)."""
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:
        error = domain_error(exc)
        await abort(context, error)
    except BaseException as exc:
        error = exc
        raise
    finally:
        call.close(error)
