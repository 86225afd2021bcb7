"""Logging set-up: text or JSON lines, each carrying the id of the request it belongs to."""

from __future__ import annotations

import asyncio
import atexit
import collections
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TextIO

from reranker_nvidia.core.request_context import request_id, request_secrets
from reranker_nvidia.core.trust.redaction import escape_controls, scrub

# Lines waiting for the writer thread; past this, lines are dropped (and counted).
_QUEUED_LINES = 10_000
# How long a batch of lines logged on the event loop gathers before the writer is woken.
_GATHER_S = 0.02
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


class _LineWriter:
    """The thread that formats and writes lines, a batch per write: it sleeps until woken,
    then writes every line waiting with one call."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self.records: collections.deque[logging.LogRecord] = collections.deque()
        self._handler = handler
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Writes every line still waiting, then ends the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            self._write_waiting()
        self._write_waiting()

    def _write_waiting(self) -> None:
        records, handler = self.records, self._handler
        lines = []
        while records:
            record = records.popleft()
            try:
                lines.append(handler.format(record))
            except Exception:
                handler.handleError(record)
        if lines:
            lines.append("")
            try:
                handler.stream.write("\n".join(lines))
                handler.flush()
            except Exception:
                handler.handleError(logging.makeLogRecord({"msg": "log write failed"}))


class _Handoff(logging.Handler):
    """Hands each record to the writer thread once its filter has run here (the request id is
    read from this thread's context, secrets masked); formatting and the write to stderr
    happen on the writer thread, off the event loop.

    On an event loop the first line of a batch wakes the writer a moment later (``gather_s``),
    by the loop's own timer, so a busy server signals the writer once per batch, never once
    per line; from any other thread a line wakes it at once. Past ``_QUEUED_LINES`` waiting,
    lines are dropped and counted, rather than the backlog growing or the loop blocking."""

    def __init__(self, writer: _LineWriter, gather_s: float) -> None:
        super().__init__()
        self._writer = writer
        self._records = writer.records
        self._gather_s = gather_s
        self._dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        records = self._records
        if len(records) >= _QUEUED_LINES:
            self._dropped += 1
            return
        was_empty = not records
        if self._dropped:
            records.append(_dropped_lines(self._dropped))
            self._dropped = 0
        records.append(record)
        if was_empty:
            try:
                asyncio.get_running_loop().call_later(self._gather_s, self._writer.wake)
            except RuntimeError:
                self._writer.wake()


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


def configure(
    level: str, log_format: str, secrets: Sequence[str] = (), stream: TextIO | None = None
) -> Callable[[], None]:
    """Log to ``stream`` (stderr) in ``log_format``; ``secrets`` never appear in a line.
    Returns what writes out every line still queued and stops the writer (also run at exit)."""
    writer = logging.StreamHandler(stream)
    if log_format == "json":
        writer.setFormatter(JsonFormatter())
    else:
        writer.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
        )
    lines = _LineWriter(writer)
    handler = _Handoff(lines, _GATHER_S)
    handler.addFilter(_RequestIdFilter(secrets))
    lines.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            lines.stop()

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
