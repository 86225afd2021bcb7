"""Logging set-up: text or JSON lines, each carrying the id of the request it belongs to."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
from collections.abc import Callable, Sequence

from reranker_nvidia.core.request_context import request_id, request_secrets
from reranker_nvidia.core.trust.redaction import escape_controls, scrub

# Lines waiting for the writer thread; past this, lines are dropped (and counted).
_QUEUED_LINES = 10_000
_TRACEBACKS = logging.Formatter()


class _RequestIdFilter(logging.Filter):
    """Tags each record with its request id, and makes its text safe to print: every secret
    the process knows is masked and control characters are escaped, whatever logged it (our
    code, uvicorn, or httpx's DEBUG lines with upstream headers)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        # Values from outside (paths, headers, upstream text) arrive as arguments; the format
        # string is the program's own, so a block it lays out over several lines stays one.
        if isinstance(record.args, tuple):
            record.args = tuple(_escaped(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _escaped(value) for key, value in record.args.items()}
        secrets = (*self._secrets, *request_secrets.get())
        record.msg = scrub(record.getMessage(), secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            # A traceback quotes values too (an exception's message, a URL): written out
            # here, masked, and used as it is by whichever formatter prints the record.
            record.exc_text = scrub(_TRACEBACKS.formatException(record.exc_info), secrets)
        for name in ("path", "method"):
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, escape_controls(value))
        return True


def _escaped(value: object) -> object:
    return escape_controls(value) if isinstance(value, str) else value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for name in ("method", "path", "status", "duration_ms", "surface"):
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _Handoff(logging.handlers.QueueHandler):
    """Hands each record to the writer thread once its filter has run here (the request id is
    read from this thread's context, secrets masked); formatting and the write to stderr
    happen on the writer thread, off the event loop. A full queue drops lines and says how
    many, rather than growing or blocking the loop."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(records)
        self._records = records
        self._dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # same process: the record crosses threads as it is

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self._dropped:
                self._records.put_nowait(_dropped_lines(self._dropped))
                self._dropped = 0
            self._records.put_nowait(record)
        except queue.Full:
            self._dropped += 1


def _dropped_lines(count: int) -> logging.LogRecord:
    return logging.makeLogRecord(
        {
            "name": __name__,
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": f"{count} log line(s) dropped: the log writer fell behind",
            "request_id": "-",
        }
    )


def configure(level: str, log_format: str, secrets: Sequence[str] = ()) -> Callable[[], None]:
    """Log to stderr in ``log_format``; ``secrets`` never appear in a line. Returns what
    writes out every line still queued and stops the writer (also run at exit)."""
    writer = logging.StreamHandler()
    if log_format == "json":
        writer.setFormatter(JsonFormatter())
    else:
        writer.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
        )
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(_QUEUED_LINES)
    handler = _Handoff(records)
    handler.addFilter(_RequestIdFilter(secrets))
    listener = logging.handlers.QueueListener(records, writer)
    listener.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            listener.stop()

    atexit.register(stop)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if root.level > logging.DEBUG:
        # httpx logs every NIM call at INFO: one line per upstream call is noise, not news.
        for chatty in ("httpx", "httpcore"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    # uvicorn's loggers print through their own handlers; route them through ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    return stop
