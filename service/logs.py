"""Process-wide logging for the ``lethe`` commands: one line per event, as text or JSON.

Log records carry ids, step names and durations, never personal data (identities, record text);
structured fields go in ``extra={"lethe": {...}}`` and become JSON keys (text: ``key=value``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "lethe", {})
        line = super().format(record)
        return line + "".join(f" {k}={v}" for k, v in fields.items())


class _JsonFormatter(JsonFormatter):
    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record.update(log_record.pop("lethe", None) or {})


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Send Lethe's loggers to stderr (``fmt``: text or json); third-party loggers stay at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            _JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time"},
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("service").setLevel(level.upper())
    logging.getLogger("shards").setLevel(level.upper())
