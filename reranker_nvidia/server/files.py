"""The process's open files: the limit lifted at start-up, and the HTTP connection cap that
leaves room under it for everything else."""

from __future__ import annotations

import contextlib
import resource

# File descriptors kept back from the HTTP connection cap: gRPC, NIM connection pools, logs.
RESERVED_FILES = 128


def default_max_connections() -> int:
    """The connection cap that leaves ``RESERVED_FILES`` of the process's file limit free."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(32, soft - RESERVED_FILES)


def raise_file_limit() -> None:
    """Lift the soft limit on open files to the hard limit, as servers do at start-up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
