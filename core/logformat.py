"""Log line formats: human-readable text (the default) or one JSON object per line for log
shippers (Loki's promtail, Elastic's filebeat, Vector), chosen by ``log_format``.

A JSON line has ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``message``,
``exception`` when there is one, and the frame's ``transport``, ``device`` and ``format``
when the log call concerns one frame (``log.warning(..., extra=frame_fields(...))``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FRAME_FIELDS = ("transport", "device", "format")


class LogFormat(StrEnum):
    """How log lines are written."""

    TEXT = "text"
    JSON = "json"


def frame_fields(
    transport: str | None = None, device: str | None = None, fmt: str | None = None
) -> dict[str, Any]:
    """The ``extra`` of a log call about one frame (its fields in a JSON line)."""
    fields = {"transport": transport, "device": device, "format": fmt}
    return {k: v for k, v in fields.items() if v is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped); with
    ``worker``, the worker process's index as a field."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        for key in FRAME_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: LogFormat, worker: int | None = None) -> None:
    """Send every logger's records to stderr in ``fmt`` at ``level`` (a worker process's
    lines name it: ``[worker 1]``, or ``"worker": 1``); as ``logging.basicConfig``, nothing
    changes when the root logger already has a handler (the first set-up of a command wins)."""
    handler = logging.StreamHandler(sys.stderr)
    text = (
        TEXT_FORMAT
        if worker is None
        else TEXT_FORMAT.replace(" %(name)s", f" [worker {worker}] %(name)s")
    )
    formatter = JsonFormatter(worker) if fmt is LogFormat.JSON else logging.Formatter(text)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler])
    if fmt is LogFormat.JSON:  # Python's warnings too, not as bare lines between the objects
        logging.captureWarnings(True)
