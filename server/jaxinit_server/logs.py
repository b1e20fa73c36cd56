"""The server's log lines: text for a terminal, or one JSON object per line for a log
shipper (``--log-format json``: Loki, Elasticsearch, Cloud Logging parse it as it is).

Every logger goes through the root logger's one handler, uvicorn's and grpc's included
(uvicorn is started without its own logging config), and Python warnings are logged too.
The JSON form is python-json-logger's formatter: ``time``, ``level``, ``logger`` and
``message``, plus whatever a record carries in ``extra`` (the request log's fields).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

__all__ = ["FORMATS", "LogFormat", "configure", "formatter", "ready_logger"]

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def formatter(log_format: LogFormat, *, text: str = TEXT, process: str = "") -> logging.Formatter:
    """The formatter of ``log_format``; ``process`` names a worker process in each line."""
    if log_format == "json":
        return JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            static_fields={"process": process} if process else None,
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's message with terminal colours
        )
    return logging.Formatter(text)


def configure(level: str, log_format: LogFormat, *, process: str = "", stream: TextIO | None = None) -> None:
    """Send every log record (this process's loggers, uvicorn's, grpc's, warnings) to
    ``stream`` (stderr) as ``log_format``, at ``level`` and above."""
    handler = logging.StreamHandler(stream or sys.stderr)
    prefix = f"%(asctime)s {process} " if process else "%(asctime)s "
    handler.setFormatter(formatter(log_format, text=prefix + "%(name)s %(levelname)s %(message)s", process=process))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Loggers that a library set up with handlers of their own speak through the root one.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "grpc"):
        logger = logging.getLogger(name)
        for old in logger.handlers[:]:
            logger.removeHandler(old)
        logger.propagate = True
        logger.disabled = False
        logger.setLevel(logging.NOTSET)  # (uvicorn's config sets its own: the root's decides)
    logging.captureWarnings(True)


def ready_logger(log_format: LogFormat, stream: TextIO | None = None) -> logging.Logger:
    """The logger of the one ``jaxinit-server ready ...`` line, on stdout whatever the log
    level: the bare line in text (as scripts read it), a JSON object in JSON."""
    logger = logging.getLogger("jaxinit_server.ready")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for old in logger.handlers[:]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter(log_format, text="%(message)s"))
    logger.addHandler(handler)
    return logger
