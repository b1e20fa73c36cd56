"""The one error hierarchy of jaxinit, and the one table that maps it to HTTP and gRPC.

The server's core raises these; the REST and gRPC adapters translate them with
:data:`ERROR_TABLE`; the client turns what comes back over either transport into
the same classes again. gRPC codes are named as strings so that this module
imports no transport.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ERROR_TABLE",
    "HTTP_STATUSES",
    "ErrorMapping",
    "IntegrityError",
    "InternalError",
    "Interrupted",
    "InvalidArgument",
    "JaxError",
    "JaxinitError",
    "NotAcceptable",
    "Overloaded",
    "PermissionDenied",
    "ProtocolError",
    "ServerUnavailable",
    "TooLarge",
    "Unauthenticated",
    "UnknownDtype",
    "UnknownInitializer",
    "VersionMismatch",
    "did_you_mean",
    "error_from_wire",
    "mapping_for",
    "retry_after_seconds",
]


# An error message quotes what the caller sent; this bounds the echo (a gRPC status
# message travels in metadata, which a client caps at 16 KiB by default).
MAX_MESSAGE = 1024


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` Did you mean X, Y?`` for the names of a closed set close to ``word`` (else ""):
    what every "unknown ..." message says before it lists the set.

    >>> did_you_mean("flaot32", ["float32", "float16", "int32"])
    ' Did you mean float32?'
    """
    if not isinstance(word, str) or len(word) > 100:
        return ""
    by_lower = {choice.lower(): choice for choice in choices}  # case is a typo too: sequential
    close = [by_lower[c] for c in difflib.get_close_matches(word.lower(), list(by_lower), n=3)]
    return f" Did you mean {', '.join(close)}?" if close else ""


class JaxinitError(Exception):
    """Base of every error jaxinit raises, on the server and in the client."""

    def __init__(self, message: str) -> None:
        message = str(message)
        if len(message) > MAX_MESSAGE:
            message = f"{message[: MAX_MESSAGE - 64]}... [{len(message)} characters, cut]"
        super().__init__(message)
        self.message = message


class InvalidArgument(JaxinitError):
    """The request is malformed: a bad shape, argument, key or setting."""


class UnknownInitializer(JaxinitError):
    """No initializer of that name is in the registry."""


class UnknownDtype(InvalidArgument):
    """The dtype is not one jaxinit knows."""


class JaxError(InvalidArgument):
    """JAX itself refused the request; the message is JAX's, verbatim."""


class TooLarge(JaxinitError):
    """The request or its response is over a configured limit."""


class NotAcceptable(JaxinitError):
    """No representation the caller accepts can be produced."""


class Unauthenticated(JaxinitError):
    """The server wants a bearer token and got none, or one it does not know."""


class PermissionDenied(JaxinitError):
    """The caller may not use what it asked for (shared memory without this server's token)."""


class VersionMismatch(JaxinitError):
    """The request pinned a JAX version (or backend) that this server is not.

    Never answered with another version's bytes: the message names the version (and
    backend) asked for and the one this server runs. Behind a pooled deployment, the
    ``x-jaxinit-jax-version`` header routes a request to its version's pool.
    """


class ServerUnavailable(JaxinitError):
    """The server cannot be reached, is not ready, or is shutting down."""


class Interrupted(ServerUnavailable):
    """A tensor's stream broke after it began (a replica died, a proxy dropped the call).

    ``partial`` holds the whole elements that arrived, as a flat range, so that a retry
    can ask for the rest only; the client does that itself (``retries=``).
    """

    def __init__(self, message: str, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class Overloaded(JaxinitError):
    """The server is at its limit of concurrent work; ``retry_after`` seconds is its advice.

    The request was not started. The client retries it (``retries=``), waiting at least
    that long, on whichever replica answers next.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(JaxinitError):
    """A bug on the server; the message says no more than that."""


class ProtocolError(JaxinitError):
    """The client received something that does not follow the protocol."""


class IntegrityError(ProtocolError):
    """The bytes received do not match what the header announced."""


@dataclass(frozen=True)
class ErrorMapping:
    http_status: int
    grpc_code: str  # a grpc.StatusCode member name


ERROR_TABLE: dict[type[JaxinitError], ErrorMapping] = {
    InvalidArgument: ErrorMapping(400, "INVALID_ARGUMENT"),
    UnknownDtype: ErrorMapping(400, "INVALID_ARGUMENT"),
    JaxError: ErrorMapping(400, "INVALID_ARGUMENT"),
    UnknownInitializer: ErrorMapping(404, "NOT_FOUND"),
    NotAcceptable: ErrorMapping(406, "INVALID_ARGUMENT"),
    Unauthenticated: ErrorMapping(401, "UNAUTHENTICATED"),
    PermissionDenied: ErrorMapping(403, "PERMISSION_DENIED"),
    VersionMismatch: ErrorMapping(412, "FAILED_PRECONDITION"),
    TooLarge: ErrorMapping(413, "RESOURCE_EXHAUSTED"),
    Overloaded: ErrorMapping(429, "RESOURCE_EXHAUSTED"),
    ServerUnavailable: ErrorMapping(503, "UNAVAILABLE"),
    Interrupted: ErrorMapping(503, "UNAVAILABLE"),
    InternalError: ErrorMapping(500, "INTERNAL"),
    ProtocolError: ErrorMapping(502, "INTERNAL"),
    IntegrityError: ErrorMapping(502, "DATA_LOSS"),
}

# Every HTTP status a domain error may be answered with: what an API description documents.
HTTP_STATUSES: tuple[int, ...] = tuple(sorted({m.http_status for m in ERROR_TABLE.values()}))
_BY_NAME: dict[str, type[JaxinitError]] = {cls.__name__: cls for cls in ERROR_TABLE}
# When only a status is known (a proxy answered, or an older server), the most
# general class for that status.
_BY_HTTP: dict[int, type[JaxinitError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: UnknownInitializer,
    406: NotAcceptable,
    412: VersionMismatch,
    413: TooLarge,
    422: InvalidArgument,
    429: Overloaded,
    502: ServerUnavailable,
    503: ServerUnavailable,
    504: ServerUnavailable,
}
_BY_GRPC: dict[str, type[JaxinitError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "NOT_FOUND": UnknownInitializer,
    "RESOURCE_EXHAUSTED": TooLarge,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "FAILED_PRECONDITION": VersionMismatch,
    "UNAVAILABLE": ServerUnavailable,
    "DEADLINE_EXCEEDED": ServerUnavailable,
    "DATA_LOSS": IntegrityError,
}


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After value in seconds (HTTP's delay-seconds form, which the server sends)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= 3600 else None


def mapping_for(error: JaxinitError) -> ErrorMapping:
    """The HTTP status and gRPC code for ``error`` (its nearest class in the table)."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[InternalError]


def error_from_wire(
    message: str,
    *,
    type_name: str | None = None,
    http_status: int | None = None,
    grpc_code: str | None = None,
) -> JaxinitError:
    """Rebuild the domain error a server sent, from its type name or else its status."""
    cls = _BY_NAME.get(type_name or "")
    if cls is None and http_status is not None:
        cls = _BY_HTTP.get(http_status, InternalError if http_status >= 500 else InvalidArgument)
    if cls is None and grpc_code is not None:
        cls = _BY_GRPC.get(grpc_code, InternalError)
    return (cls or InternalError)(message)
