"""jaxinit_server.logs: every logger (a library's with a handler of its own included), a
warning and a traceback come out as one JSON object per line; text stays text."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from jaxinit_server import logs


@pytest.fixture
def restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    uvicorn = logging.getLogger("uvicorn")
    uvicorn_handlers, uvicorn_propagate = uvicorn.handlers[:], uvicorn.propagate
    yield
    root.handlers[:], uvicorn.handlers[:], uvicorn.propagate = handlers, uvicorn_handlers, uvicorn_propagate
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restored")
def test_json_lines_from_every_logger() -> None:
    logging.getLogger("uvicorn").addHandler(logging.StreamHandler(io.StringIO()))  # as uvicorn's config does
    logging.getLogger("uvicorn").propagate = False
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 7, extra={"color_message": "\x1b[36m"})
    logging.getLogger("grpc._server").warning("a grpc line")
    logging.getLogger("jaxinit_server.requests").info("asked", extra={"initializer": "lecun_normall", "shape": [3]})
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a warning", UserWarning, stacklevel=1)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("jaxinit_server.rest").exception("internal error")
    lines = out.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 5
    assert [r["logger"] for r in records] == [
        "uvicorn.error",
        "grpc._server",
        "jaxinit_server.requests",
        "py.warnings",
        "jaxinit_server.rest",
    ]
    assert records[0]["message"] == "Started server process [7]" and "color_message" not in records[0]
    assert records[2]["initializer"] == "lecun_normall" and records[2]["shape"] == [3]
    assert "ValueError: boom" in records[4]["exc_info"] and records[4]["level"] == "ERROR"
    assert all(r["time"].endswith("+00:00") for r in records)


@pytest.mark.usefixtures("restored")
def test_worker_lines_name_the_worker_and_text_stays_text() -> None:
    out = io.StringIO()
    logs.configure("info", "json", process="worker", stream=out)
    logging.getLogger("jax").info("hello")
    assert json.loads(out.getvalue())["process"] == "worker"
    text = io.StringIO()
    logs.configure("info", "text", process="worker", stream=text)
    logging.getLogger("jax").info("hello")
    assert text.getvalue().rstrip().endswith(" worker jax INFO hello")


def test_the_ready_line() -> None:
    for log_format in logs.FORMATS:
        out = io.StringIO()
        logs.ready_logger(log_format, out).info("jaxinit-server ready grpc=%s http=%s", "h:1", "http://h:2")
        line = out.getvalue()
        if log_format == "text":
            assert line == "jaxinit-server ready grpc=h:1 http=http://h:2\n"
        else:
            assert json.loads(line)["message"] == "jaxinit-server ready grpc=h:1 http=http://h:2"
