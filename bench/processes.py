"""What the benchmark and the soak share: running the sidecar and the emulator as processes,
and the words their passages are made of."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EMULATOR_READY = r"127\.0\.0\.1:(\d+)/v1/ranking"
SIDECAR_READY = r"HTTP on 127\.0\.0\.1:(\d+) and gRPC on 127\.0\.0\.1:(\d+)"
SERVE = ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"]
WORDS = [
    "rerank",
    "model",
    "passage",
    "order",
    "query",
    "score",
    "vector",
    "keyword",
    "hybrid",
    "search",
    "index",
    "token",
    "latency",
    "memory",
    "network",
    "cluster",
    "shard",
    "object",
]


def clean_environment() -> dict[str, str]:
    """This environment without the caller's keys and settings: every run starts the same."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVIDIA_", "RERANKER_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _script() -> str:
    local = Path(sys.executable).parent / "reranker-nvidia"
    return str(local) if local.exists() else shutil.which("reranker-nvidia") or "reranker-nvidia"


SCRIPT = _script()


@contextmanager
def running(
    args: list[str], env: dict[str, str], ready: str, transcript: list[str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], re.Match[str]]]:
    """``reranker-nvidia ARGS`` as a process, once it printed a line matching ``ready``:
    (the process, the match).

    Every line it prints goes to ``transcript`` when one is given (and is read and dropped
    otherwise: a full pipe would stop it at its next log line). The process is terminated on
    the way out, and killed if it does not stop.
    """
    child = subprocess.Popen(
        [SCRIPT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert child.stdout is not None
    lines: list[str] | deque[str] = transcript if transcript is not None else deque(maxlen=50)
    reader: threading.Thread | None = None
    try:
        deadline = time.monotonic() + 30
        match = None
        while match is None and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(ready, line)
        if match is None:
            raise RuntimeError(f"{args[0]} did not start:\n{''.join(lines)}")
        reader = threading.Thread(target=lambda: lines.extend(child.stdout or ()), daemon=True)
        reader.start()
        yield child, match
    finally:
        stop(child)
        if reader is not None:
            reader.join(5)
        child.stdout.close()


# What ``running_together`` takes for each process (its arguments, environment and ready line),
# and gives back (the process, and the match of its ready line).
Command = tuple[list[str], dict[str, str], str]
Started = tuple[subprocess.Popen[str], re.Match[str]]


@contextmanager
def running_together(commands: Sequence[Command]) -> Iterator[list[Started]]:
    """``running(args, env, ready)`` for each command, all started at once and stopped at once
    (a process spends its start-up importing, and its stop draining, mostly waiting or on one
    core): what each gives, in order. If one does not start, those that did are stopped."""
    managers = [running(args, env, ready) for args, env, ready in commands]
    with ThreadPoolExecutor(max(1, len(managers))) as pool:
        starts = [pool.submit(manager.__enter__) for manager in managers]
    started = [
        manager
        for manager, start in zip(managers, starts, strict=True)
        if start.exception() is None
    ]
    try:
        for start in starts:
            error = start.exception()
            if error is not None:
                raise error
        yield [start.result() for start in starts]
    finally:
        with ThreadPoolExecutor(max(1, len(started))) as pool:
            stops = [pool.submit(manager.__exit__, None, None, None) for manager in started]
        for stopped in stops:
            stopped.result()


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free now: for servers started at the same time as the
    clients that must know their ports."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def free_port() -> int:
    return free_ports(1)[0]


def stop(child: subprocess.Popen[Any]) -> None:
    """Terminate ``child`` if it still runs, and kill it if it does not stop within 15 s."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RedisServer:
    """``redis-server`` on a loopback port, stopped and started again on the same port."""

    def __init__(self, password: str | None = None) -> None:
        self._password = password
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: `make test` and `make bench` install it (Debian's)"
            )
        self._binary = binary
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *(["--requirepass", self._password] if self._password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                # A server with a password answers -NOAUTH: it is up all the same.
                if self.command(b"PING").startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def command(self, *parts: bytes) -> bytes:
        """One command's raw reply (RESP), on a connection of its own."""
        request = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
            connection.sendall(request)
            return connection.recv(4096)

    def key_count(self) -> int:
        return int(self.command(b"DBSIZE")[1:].strip())

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None
