"""The REST adapter (FastAPI), by concern: ``app`` (the composition root: ``create_app``),
``schemas`` (request bodies), ``errors`` (the error body, from the one error table),
``middleware`` (auth, body cap, replica header), ``deps`` (the service and telemetry as
dependencies, off-loop JSON bodies, the telemetry envelope), ``framing`` (how a tensor or
a model is written in each media type), and one router per resource under ``routes``."""
