"""Attackers for the sidecar's ports, shared by the soak (bench/soak.py) and the tests
(tests/test_grpc_abuse.py). Each one takes a port on 127.0.0.1: loopback only.

On the HTTP port and the TLS port (asyncio streams):

- silent connections: a TCP connection (or one that finishes its TLS handshake) that then
  sends nothing, held until the sidecar closes it, its time to closure measured;
- a request whose one header value or URL is huge, streamed until the sidecar answers, the
  bytes sent before the answer counted;
- an upload that stops part-way through a large body.

On the gRPC port, HTTP/2 frame by frame (hyperframe and hpack, h2's own parts, over blocking
sockets: run them in threads) so that an attacker can do what a well-behaved client never
would: open more streams than it is allowed, never open its flow-control window, reset every
stream it opens, flood pings or SETTINGS.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

HOST = "127.0.0.1"
_FILLER = b"a" * (1024 * 1024)  # what huge headers, URLs and bodies are made of, a MiB a write
# How long a write may wait for the sidecar to read before the attacker takes it that the
# sidecar stopped reading (it answered, or it is lingering before it closes).
_STALLED_WRITE_S = 2.0


# -- HTTP/1.1 and TLS ---------------------------------------------------------------------


@dataclass
class Held:
    """One connection an attacker holds open."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened_at: float  # time.monotonic()

    def close(self) -> None:
        self.writer.close()


async def open_silent(
    port: int, count: int, *, tls: ssl.SSLContext | None = None, batch: int = 100
) -> list[Held]:
    """``count`` connections to ``port`` that send nothing (with ``tls``: nothing after the
    handshake), opened ``batch`` at a time. Those the sidecar refused before they were open
    (a TLS handshake it cut short) are left out: ``count`` minus the length of the answer.
    Any other failure (this process out of files) raises."""
    held: list[Held] = []

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(HOST, port, ssl=tls)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        held.append(Held(reader, writer, time.monotonic()))

    for start in range(0, count, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
    return held


async def closed_after(held: Held, timeout_s: float) -> float | None:
    """Seconds from ``held``'s opening to the sidecar closing it (whatever it sent first is
    read and dropped), or None if it is still open ``timeout_s`` from now."""
    try:
        await asyncio.wait_for(_until_closed(held.reader), timeout_s)
    except asyncio.TimeoutError:
        return None
    return time.monotonic() - held.opened_at


async def _until_closed(reader: asyncio.StreamReader) -> None:
    # A reset (a refused upload still sending is reset after its answer) or a TLS connection
    # aborted mid-record is let go all the same.
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await reader.read(65536):
            pass


@dataclass
class Answer:
    """What became of one hostile request."""

    status: int | None  # the sidecar's answer; None: closed (or still open) without one
    answered_after_s: float | None  # from the connection's opening
    sent_bytes: int  # what the attacker had written when the answer came (or it gave up)
    closed_after_s: float | None  # from the connection's opening; None: still open


async def send_oversized(
    port: int, *, header_bytes: int = 0, url_bytes: int = 0, timeout_s: float = 10
) -> Answer:
    """One request whose single header value is ``header_bytes`` long, or whose URL is
    ``url_bytes`` long, streamed a MiB at a time until the sidecar answers or stops reading;
    then waits up to ``timeout_s`` for the sidecar to close the connection."""
    if url_bytes:
        head, filler, tail = b"GET /", url_bytes, b" HTTP/1.1\r\nHost: soak\r\n\r\n"
    else:
        head = b"GET /.well-known/ready HTTP/1.1\r\nHost: soak\r\nX-Huge: "
        filler, tail = header_bytes, b"\r\n\r\n"
    return await _attack(port, head, filler, tail, timeout_s)


async def stalled_upload(port: int, *, declared: int, sent: int, timeout_s: float = 10) -> Answer:
    """A POST declaring a ``declared``-byte body that sends ``sent`` bytes of it (a MiB at a
    time, stopping early if the sidecar answers) and then nothing; waits up to ``timeout_s``
    for the answer and the connection's closing."""
    head = (
        b"POST /rerank HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % declared
    )
    return await _attack(port, head, sent, b"", timeout_s)


async def _attack(port: int, head: bytes, filler: int, tail: bytes, timeout_s: float) -> Answer:
    opened_at = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    answer = asyncio.ensure_future(_status(reader))
    sent = 0
    try:
        writer.write(head)
        sent += len(head)
        left = filler
        while left > 0 and not answer.done():
            piece = _FILLER if left >= len(_FILLER) else _FILLER[:left]
            writer.write(piece)
            sent += len(piece)
            left -= len(piece)
            if not await _drained(writer, answer):
                break
        if left <= 0 and tail and not answer.done():
            writer.write(tail)
            sent += len(tail)
        status: int | None = None
        answered_after: float | None = None
        try:
            status = await asyncio.wait_for(asyncio.shield(answer), timeout_s)
            answered_after = time.monotonic() - opened_at
        except asyncio.TimeoutError:
            answer.cancel()  # it reads no more: what follows reads to the end
            with contextlib.suppress(asyncio.CancelledError):
                await answer
        closed = await closed_after(Held(reader, writer, opened_at), timeout_s)
        return Answer(status, answered_after, sent, closed)
    finally:
        answer.cancel()
        writer.close()


async def _drained(writer: asyncio.StreamWriter, answer: asyncio.Future[int | None]) -> bool:
    """Whether what was written went out before the answer came or the write stalled."""
    drain = asyncio.ensure_future(writer.drain())
    either: set[asyncio.Future[Any]] = {drain, answer}
    done, _ = await asyncio.wait(
        either, timeout=_STALLED_WRITE_S, return_when=asyncio.FIRST_COMPLETED
    )
    if drain not in done:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await drain
        return False
    return drain.exception() is None


async def _status(reader: asyncio.StreamReader) -> int | None:
    """The status of the answer's line, once it arrives (None: closed without one)."""
    try:
        line = await reader.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    return int(found[1]) if found else None


# -- HTTP/2 on the gRPC port ----------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET_META = "/reranker_nvidia.v1.RerankerService/GetMeta"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"  # a gRPC frame holding an empty protobuf message
REFUSED_STREAM = 7
CANCEL = 8
ENHANCE_YOUR_CALM = 11
# How gRPC refuses a stream past its limit: after its SETTINGS are acknowledged, before.
REFUSALS = (REFUSED_STREAM, ENHANCE_YOUR_CALM)


class Peer:
    """One HTTP/2 connection to the gRPC port, driven frame by frame."""

    def __init__(self, port: int, *, window: int | None = None) -> None:
        """``window``: the INITIAL_WINDOW_SIZE this peer announces (0: it takes no answer)."""
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.closed = False
        self.goaway: GoAwayFrame | None = None
        self.refused = 0
        self.cancelled = 0  # streams the server ended with RST_STREAM CANCEL
        self.statuses: list[str] = []
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._buffer = bytearray()
        self._next_stream = 1
        settings = SettingsFrame(0)
        if window is not None:
            settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] = window
        self.send(PREFACE + settings.serialize())

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def request(
        self,
        path: str = GET_META,
        *,
        body: bytes | None = EMPTY_MESSAGE,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        """The frames of a new call (not sent): its headers, then ``body`` ending the stream
        (``None``: the request never comes)."""
        stream = self._next_stream
        self._next_stream += 2
        headers = HeadersFrame(stream)
        headers.data = self._encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", HOST),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            ]
        )
        headers.flags.add("END_HEADERS")
        if body is None:
            return headers.serialize()
        data = DataFrame(stream, body)
        data.flags.add("END_STREAM")
        return headers.serialize() + data.serialize()

    def reset(self) -> bytes:
        """A new call's headers, then its cancellation (the frames, not sent)."""
        stream = self._next_stream
        return self.request(body=None) + RstStreamFrame(stream, CANCEL).serialize()

    def read(self, timeout_s: float) -> list[Frame]:
        """The frames that arrive within ``timeout_s``; SETTINGS and PINGs are acknowledged,
        as a live client's would be."""
        frames: list[Frame] = []
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return frames
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return frames
        self._buffer += data
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
            del self._buffer[: 9 + length]
            frames.append(frame)
            self._note(frame)
        return frames

    def _note(self, frame: Frame) -> None:
        if isinstance(frame, GoAwayFrame):
            self.goaway = frame
        elif isinstance(frame, RstStreamFrame) and frame.error_code in REFUSALS:
            self.refused += 1
        elif isinstance(frame, RstStreamFrame) and frame.error_code == CANCEL:
            self.cancelled += 1
        elif isinstance(frame, HeadersFrame):
            for name, value in self._decoder.decode(frame.data):
                if name in ("grpc-status", b"grpc-status"):
                    self.statuses.append(value.decode() if isinstance(value, bytes) else value)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            self.send(PingFrame(0, frame.opaque_data, flags=["ACK"]).serialize())

    def read_until(self, done: Callable[[Peer], bool], timeout_s: float) -> bool:
        """Reads until ``done(self)``, the connection closes or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while not done(self) and not self.closed and time.monotonic() < deadline:
            self.read(0.05)
        return done(self)

    def close(self) -> None:
        self.sock.close()


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout_s`` (whatever it sends first)."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def zero_window(port: int, connections: int, calls: int) -> list[Peer]:
    """``connections`` connections that announce a flow-control window of 0 (so no answer
    can reach them), each sending ``calls`` calls at once before the server's stream limit
    is known, then never reading again: not even the server's pings."""
    peers = [Peer(port, window=0) for _ in range(connections)]
    for peer in peers:
        peer.send(b"".join(peer.request() for _ in range(calls)))
    return peers


@dataclass
class Flood:
    """What one flooding connection sent, and what the server did about it."""

    peer: Peer
    frames: int  # frames sent (for a rapid reset: streams opened and reset)
    blocked_s: float = 0.0  # how long the server left the flood unread
    closed_after_s: float | None = None  # when the server closed the connection, if it did


def rapid_reset(port: int, duration_s: float, started: threading.Event | None = None) -> Flood:
    """For ``duration_s``, one connection opening streams and resetting each at once
    (HEADERS then RST_STREAM), 100 per write, reading between writes (it acknowledges the
    server's SETTINGS and pings, and counts the refused streams). ``started`` is set once
    the flood is under way."""
    peer = Peer(port)
    peer.read(0.5)
    streams = 0
    if started is not None:
        started.set()
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline and not peer.closed:
        peer.send(b"".join(peer.reset() for _ in range(100)))
        streams += 100
        peer.read(0.001)
    return Flood(peer, streams)


def ping_flood(port: int, timeout_s: float = 5) -> Flood:
    """One connection sending PINGs, 100 per write, until the server says GOAWAY or closes
    it (or ``timeout_s`` passes); then it reads on (up to ``timeout_s``) for the GOAWAY."""
    peer = Peer(port)
    peer.read(0.5)
    pings = PingFrame(0, b"12345678").serialize() * 100
    sent = 0
    deadline = time.monotonic() + timeout_s
    while peer.goaway is None and not peer.closed and time.monotonic() < deadline:
        peer.send(pings)
        sent += 100
        peer.read(0.001)
    peer.read_until(lambda peer: peer.goaway is not None, timeout_s)
    return Flood(peer, sent)


def settings_flood(port: int, duration_s: float) -> Flood:
    """For ``duration_s``, one connection sending SETTINGS frames that each change its
    window (every one must be applied and acknowledged), 100 per write, never reading the
    acknowledgements: they pile up on the server's side unless it bounds them. Whether the
    server then stops reading the flood is in ``Flood.blocked_s``."""
    peer = Peer(port)
    frames = bytearray()
    for i in range(100):
        settings = SettingsFrame(0)
        settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] = 65_535 + i
        frames += settings.serialize()
    batch = memoryview(bytes(frames))
    flood = Flood(peer, 0)
    peer.sock.settimeout(0.1)
    pending = batch
    began = time.monotonic()
    while (now := time.monotonic()) < began + duration_s:
        try:
            pending = pending[peer.sock.send(pending) :]
        except TimeoutError:
            flood.blocked_s += time.monotonic() - now
            continue
        except OSError:
            peer.closed = True
            flood.closed_after_s = time.monotonic() - began
            break
        if not pending:
            flood.frames += 100
            pending = batch
    return flood
