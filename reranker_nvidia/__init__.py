"""reranker-nvidia: rerank vector, keyword and hybrid search hits with NVIDIA NIM.

The public API is the gRPC client and the values it speaks in; importing it costs grpcio and
protobuf only. The server (``reranker-nvidia serve``) is built from the subpackages: ``core``
(ranking policy, NIM calls), ``web`` (the HTTP contracts), ``rpc`` (the gRPC service) and
``server`` (the process that puts them together).
"""

__version__ = "0.1.0"

from reranker_nvidia import types
from reranker_nvidia.client import AsyncRerankerClient, RerankerClient
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.types import *  # noqa: F403

__all__ = [
    "AsyncRerankerClient",
    "ErrorCode",
    "RerankError",
    "RerankerClient",
    "__version__",
    *types.__all__,
]
