"""HTTP/1.1 on the wire, parsed in C by httptools: the server the HTTP contracts are served
by, and the client NIM is called with. Nothing here knows a contract or a NIM."""

from reranker_nvidia.wire.asgi import run_asgi
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
from reranker_nvidia.wire.exchange import App, Refusal, Request, Response
from reranker_nvidia.wire.limits import ServerLimits, body_charge
from reranker_nvidia.wire.listener import bind_tcp_listener
from reranker_nvidia.wire.pool import HttpClient
from reranker_nvidia.wire.server import HttpServer

__all__ = [
    "AnswerTooLarge",
    "App",
    "ClientClosed",
    "ClientResponse",
    "ConnectError",
    "ConnectTimeout",
    "HeaderTooLarge",
    "HttpClient",
    "HttpClientError",
    "HttpServer",
    "InvalidHeader",
    "InvalidResponse",
    "InvalidURL",
    "ProxyError",
    "ReadError",
    "Refusal",
    "RemoteProtocolError",
    "Request",
    "Response",
    "ServerLimits",
    "Target",
    "TransportError",
    "bind_tcp_listener",
    "body_charge",
    "run_asgi",
]
