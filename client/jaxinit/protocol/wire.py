"""Names on the wire that client and server must agree on: media types, HTTP headers and
gRPC metadata keys. (The messages themselves are the generated stubs in ``jaxinit.v1``.)

Header names are lowercase: HTTP compares them case-insensitively (and HTTP/2 sends them
lowercase), and gRPC metadata keys must be lowercase, so one spelling serves both.
"""

from __future__ import annotations

__all__ = [
    "BYTE_ORDER_HEADER",
    "CACHE_HEADER",
    "COUNT_HEADER",
    "DIGESTED",
    "DIGEST_ALGORITHM_HEADER",
    "DIGEST_HEADER",
    "DTYPE_HEADER",
    "ERROR_TYPE_KEY",
    "JAX_VERSION_HEADER",
    "JSON",
    "MODEL_DIGEST_HEADER",
    "NPY",
    "NPZ",
    "OCTET",
    "OFFSET_HEADER",
    "PROVENANCE_HEADER",
    "REGION_HEADER",
    "REPLICA_HEADER",
    "REQUEST_DIGEST_HEADER",
    "REQUEST_ID_HEADER",
    "RETRY_AFTER_KEY",
    "SAFETENSORS",
    "SHAPE_HEADER",
    "SHARED_MEMORY_HEADER",
    "TENSORS",
]

# Media types of a tensor answer (REST).
OCTET = "application/octet-stream"  # the raw little-endian bytes
NPY = "application/x-npy"  # a .npy file
JSON = "application/json"
DIGESTED = "application/vnd.jaxinit.tensor"  # the raw bytes, then their digest (see DIGEST_ALGORITHM_HEADER)
# Media types of a whole model.
SAFETENSORS = "application/safetensors"
NPZ = "application/x-npz"
# Many tensors in one response, each framed as the gRPC stream frames it (its header, bytes
# and digest, or an error): a whole model in one request (see jaxinit.protocol.frames).
TENSORS = "application/vnd.jaxinit.tensors"

# Headers of a tensor answer (REST).
SHAPE_HEADER = "x-jaxinit-shape"  # the whole tensor's dims, comma-separated ("" for a scalar)
DTYPE_HEADER = "x-jaxinit-dtype"  # a name of jaxinit.protocol.codec.DTYPE_NAMES
BYTE_ORDER_HEADER = "x-jaxinit-byte-order"  # always "little"
OFFSET_HEADER = "x-jaxinit-offset"  # a range's first flat element
COUNT_HEADER = "x-jaxinit-count"  # the elements sent
REQUEST_DIGEST_HEADER = "x-jaxinit-request-digest"  # the canonical request's SHA-256
PROVENANCE_HEADER = "x-jaxinit-provenance"  # jaxinit.protocol.Provenance as compact JSON
DIGEST_ALGORITHM_HEADER = "x-jaxinit-digest-algorithm"  # of the DIGESTED trailer
MODEL_DIGEST_HEADER = "x-jaxinit-model-digest"  # a whole model's canonical description's digest
CACHE_HEADER = "x-jaxinit-cache"  # how the answer was made: miss, shared, hit, disk or none
# Same-host shared memory: the caller's token (request), the region holding the bytes and
# their digest, hex (response; the body is then empty).
SHARED_MEMORY_HEADER = "x-jaxinit-shared-memory"
REGION_HEADER = "x-jaxinit-region"
DIGEST_HEADER = "x-jaxinit-digest"

# Both transports (HTTP header and gRPC metadata key).
REQUEST_ID_HEADER = "x-request-id"
REPLICA_HEADER = "x-jaxinit-replica"  # which replica answered
RETRY_AFTER_KEY = "retry-after"  # seconds, on 429 / RESOURCE_EXHAUSTED (Overloaded) and 503
# The JAX version a request is pinned to (its jax_version field, or this alone): a pooled
# deployment's load balancer routes on it; a server that is not that version refuses (412 /
# FAILED_PRECONDITION). The client sends it whenever a version is pinned.
JAX_VERSION_HEADER = "x-jaxinit-jax-version"
ERROR_TYPE_KEY = "jaxinit-error-type"  # gRPC trailing metadata: the domain error's class name
