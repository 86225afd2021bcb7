"""A deadline around one awaitable, at the least cost the running Python offers."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(seconds: float, work: Awaitable[T]) -> T:
    """``work``'s result, or TimeoutError after ``seconds``: ``asyncio.timeout`` where there
    is one (no task per call, as ``wait_for`` makes on 3.11)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await work
    return await asyncio.wait_for(work, seconds)  # pragma: no cover - Python 3.10
