"""What the benchmark and the soak share: running the sidecar and the emulator as processes,
and the words their passages are made of."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def running(
    args: list[str], env: dict[str, str], ready: str
) -> Iterator[tuple[int, re.Match[str]]]:
    """``reranker-nvidia ARGS`` once it printed a line matching ``ready``: (pid, match)."""
    child = subprocess.Popen(
        [_script(), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert child.stdout is not None
    try:
        deadline = time.monotonic() + 30
        match = None
        for line in child.stdout:
            match = re.search(ready, line)
            if match or time.monotonic() > deadline:
                break
        if match is None:
            raise SystemExit(f"{args[0]} did not start")
        # Keep reading what it prints: a full pipe would stop it at its next log line.
        threading.Thread(target=lambda: deque(child.stdout or (), maxlen=0), daemon=True).start()
        yield child.pid, match
    finally:
        child.terminate()
        child.wait(15)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
