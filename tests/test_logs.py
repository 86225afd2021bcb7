"""The log writer: every line written, in order, off the thread that logged it; a writer that
falls behind costs the logging thread nothing, and what it could not keep is counted."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import pytest

from reranker_nvidia.server import logs
from tests.support import eventually

LOGGER = logging.getLogger("reranker_nvidia.test.logs")


class StalledStream(io.StringIO):
    """A stream whose first write waits until the test lets it go; ``caught_up`` is set after
    the next write (the writer takes every waiting line before it writes)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.caught_up = threading.Event()

    def write(self, text: str) -> int:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30), "the test never let the writer go"
        elif self.release.is_set():
            self.caught_up.set()
        return super().write(text)


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    yield
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def test_every_line_is_written_in_order_and_masked() -> None:
    stream = io.StringIO()
    stop = logs.configure("INFO", "text", ["nvapi-log-secret-0123"], stream=stream)
    for number in range(500):
        LOGGER.info("line %d nvapi-log-secret-0123", number)
    stop()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 500
    assert [line.rsplit(": ", 1)[1].split()[1] for line in lines] == [
        str(number) for number in range(500)
    ]
    assert "nvapi-log-secret-0123" not in stream.getvalue()
    assert all(line.endswith("***") for line in lines)


def test_a_stalled_writer_drops_lines_past_the_bound_and_says_how_many() -> None:
    stream = StalledStream()
    stop = logs.configure("INFO", "text", stream=stream)
    LOGGER.info("first")
    assert stream.entered.wait(30)
    # The writer is stuck in its write: these fill the backlog, and the last five do not fit.
    for number in range(logs._QUEUED_LINES + 5):
        LOGGER.info("backlog %d", number)
    stream.release.set()
    assert stream.caught_up.wait(30)
    LOGGER.info("after")  # once there is room again, the count goes first
    stop()
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("first")
    backlog = [line for line in lines if "backlog" in line]
    assert len(backlog) == logs._QUEUED_LINES
    assert backlog[-1].endswith(f"backlog {logs._QUEUED_LINES - 1}")
    assert "5 log line(s) dropped: the log writer fell behind" in lines[-2]
    assert lines[-1].endswith("after")


async def test_lines_logged_on_the_event_loop_are_written_without_a_flush() -> None:
    stream = io.StringIO()
    stop = logs.configure("INFO", "text", stream=stream)
    try:
        for number in range(3):
            LOGGER.info("on the loop %d", number)
        await eventually(lambda: stream.getvalue().count("\n") == 3)
        assert stream.getvalue().splitlines()[2].endswith("on the loop 2")
    finally:
        stop()
