"""The daemon's own log lines (stderr): text for people, JSON lines for log shippers.

A JSON line is one object: ``time`` (UTC, ISO 8601 with milliseconds), ``level`` (lower case),
``event`` (a stable name such as ``connected`` or ``reload_refused``), ``message`` (the text line),
``logger``, and ``fields`` (the event's values: numbers stay numbers). A call site names its event
and fields with ``extra=ev("name", key=value, ...)``; a line without them has event ``log``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")
#: The logger of every serve module. Its name is in each line (text and JSON ``logger``), which log filters
#: select on, so it names the daemon rather than a module.
DAEMON_LOGGER = "etool_sensor.daemon"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: fields added to every line of this process (the daemon's name, so N workers' lines can be told apart)
context: dict[str, Any] = {}


def ev(event: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a logging call: the event name and its fields."""
    return {"event": event, "fields": fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one line each."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        obj: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or "log",
            "message": record.getMessage(),
            "logger": record.name,
        }
        fields = dict(context)
        fields.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        obj["fields"] = fields
        return json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``; a worker of ``serve --workers N`` names itself after the logger (``daemon[etool-sensor-1]``)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        worker = context.get("worker")
        if worker:
            record = logging.makeLogRecord(record.__dict__)
            record.name = f"{record.name}[{worker}]"
        return super().format(record)


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Log to stderr in ``fmt`` (text or json). Replaces a handler this function installed before and
    leaves others (a test's capture handler) alone."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    h._etool = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_etool", False):
            root.removeHandler(old)
    root.addHandler(h)
    root.setLevel(level)
