"""Log output of every process: plain text lines or one JSON object per line.

``cam.logFormat`` chooses: ``text`` for people reading a terminal or ``camctl logs``,
``json`` for a log pipeline (journald, Loki, Elasticsearch ...). Either way a record
made while a request is handled names its request id (``camcore.requestid``).

JSON lines are made by python-json-logger (PyPI ``python-json-logger``), which
serialises anything a record carries (``extra=`` fields included) and never fails on a
value JSON cannot hold; this module only chooses and names the fields.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from . import requestid

FORMATS: Final = ("text", "json")
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_DROPPED: Final = frozenset({"color_message", "websocket"})
"""Record attributes that are noise in JSON: uvicorn's coloured copy of the message, the
repr of the connection object the websockets library adds."""
_RESERVED: Final = (*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message",
                    "asctime", "request_id", "taskName")
"""What a LogRecord has of its own: only what a caller added (``extra=``) becomes a field."""


def utc_iso(created: float) -> str:
    """``created`` (a record's time) as ISO 8601 UTC with milliseconds: 2030-01-02T10:00:00.123Z."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class JsonFormatter(_JsonFormatter):
    """One JSON object per record.

    Fields: ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, ``process``
    (``cam-chat`` ...), ``node`` (cam.nodeName), ``pid``; ``request_id`` when the record
    was made for a request; ``exception`` (the traceback) when there is one; then the
    record's ``extra=`` fields (the edge's access lines: ``method``, ``path``,
    ``status``, ``client``).
    """

    def __init__(self, process: str, node: str = "") -> None:
        super().__init__(rename_fields={"exc_info": "exception", "stack_info": "stack"},
                         reserved_attrs=[*_RESERVED, *_DROPPED])
        self.process, self.node = process, node

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_data["time"] = utc_iso(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data["process"] = self.process
        if self.node:
            log_data["node"] = self.node
        log_data["pid"] = record.process
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            log_data["request_id"] = request_id
        super().add_fields(log_data, record, message_dict)


class TextFormatter(logging.Formatter):
    """``<local time> <process> <LEVEL> <logger>: <message>``, then ``request_id=<id>``
    when the record was made for a request, then any traceback."""

    def __init__(self, process: str) -> None:
        super().__init__(f"%(asctime)s {process.replace('%', '%%')} %(levelname)s %(name)s: "
                         "%(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        text = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} request_id={request_id}" if request_id is not None else text


class _Handler(logging.StreamHandler):
    """The stderr handler this module installs (and replaces on reconfiguration)."""


def configure(process: str, *, fmt: str = "text", level: str = "INFO", node: str = "") -> None:
    """Log every record at ``level`` or above to stderr in ``fmt`` (``text`` or ``json``).

    Python's warnings and an exception that ends the process are logged too, so that
    with ``json`` nothing but JSON lines reaches the log. Called again (once the settings
    are read), it replaces its own handler and leaves any other (a test's, say) alone.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.addFilter(requestid.Filter())
    handler.setFormatter(JsonFormatter(process, node) if fmt == "json" else TextFormatter(process))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger(__name__).critical("uncaught exception, exiting", exc_info=(kind, exc, tb))
