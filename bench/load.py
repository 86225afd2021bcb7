"""A lean HTTP/1.1 load client for the benchmarks: keep-alive connections over asyncio streams,
each used by one caller at a time, requests written as prebuilt bytes, answers read by
Content-Length and not parsed.

A general-purpose client (httpx) costs several milliseconds of CPU per 100-passage request in
the benchmark's own process; at concurrency 64 on two cores that client, not the servers,
set the pace. This one costs a fraction of that, and the same for every server measured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit


class HttpError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


class LeanClient:
    """POSTs JSON bodies to one origin (``http://host:port``). ``close()`` closes every
    connection, those in use too: a caller cancelled mid-request leaves the server at once."""

    def __init__(self, origin: str, headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(origin)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._head = f"Host: {self._host}:{self._port}\r\nContent-Type: application/json\r\n{extra}"
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def post(self, path: str, body: bytes) -> bytes:
        """The answer's body; anything but 200 raises ``HttpError``. A kept-alive connection
        the server closed while it was idle is replaced, and the request sent again once."""
        request = (
            f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        while self._idle:
            connection = self._idle.pop()
            try:
                status, answer = await connection.exchange(request)
            except (asyncio.IncompleteReadError, ConnectionError):
                self._discard(connection)
                continue
            return self._kept(connection, status, answer)
        reader, writer = await asyncio.open_connection(self._host, self._port)
        connection = _Connection(reader, writer)
        self._open.add(connection)
        try:
            status, answer = await connection.exchange(request)
        except BaseException:
            self._discard(connection)
            raise
        return self._kept(connection, status, answer)

    def _discard(self, connection: _Connection) -> None:
        self._open.discard(connection)
        connection.close()

    def _kept(self, connection: _Connection, status: int, answer: bytes) -> bytes:
        self._idle.append(connection)
        if status != 200:
            raise HttpError(status, answer)
        return answer

    def close(self) -> None:
        self._idle.clear()
        while self._open:
            self._open.pop().close()
