"""The gRPC adapter, by concern: ``status`` (domain error -> status and trailers, request
ids), ``interceptors`` (unparseable messages, auth), ``servicer`` (jaxinit.v1.Initializers)
and ``server`` (the composition root, which also mounts KServe's servicer)."""
