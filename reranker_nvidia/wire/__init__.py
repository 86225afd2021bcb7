"""HTTP/1.1 on the wire, parsed in C by httptools: the server the HTTP contracts are served
by, and the client NIM is called with. Nothing here knows a contract or a NIM."""

from reranker_nvidia.wire.client import ClientResponse, Target
from reranker_nvidia.wire.errors import (
    AnswerTooLarge,
    ClientClosed,
    ConnectError,
    ConnectTimeout,
    HeaderTooLarge,
    HttpClientError,
    InvalidHeader,
    InvalidResponse,
    InvalidURL,
    ProxyError,
    ReadError,
    RemoteProtocolError,
    TransportError,
)
from reranker_nvidia.wire.pool import HttpClient

__all__ = [
    "AnswerTooLarge",
    "ClientClosed",
    "ClientResponse",
    "ConnectError",
    "ConnectTimeout",
    "HeaderTooLarge",
    "HttpClient",
    "HttpClientError",
    "InvalidHeader",
    "InvalidResponse",
    "InvalidURL",
    "ProxyError",
    "ReadError",
    "RemoteProtocolError",
    "Target",
    "TransportError",
]
