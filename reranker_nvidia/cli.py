"""``reranker-nvidia``: serve the sidecar, rank from the command line, or run the NIM emulator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reranker_nvidia import __version__
from reranker_nvidia.errors import RerankError
from reranker_nvidia.nim_schema import TRUNCATE_VALUES
from reranker_nvidia.server import logs
from reranker_nvidia.server.startup import StartupError, stop_signal
from reranker_nvidia.settings import KEY_VARIABLES, Settings

PROTO_FILE = "reranker_service.proto"


def _share(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reranker-nvidia",
        description="Rerank search hits with NVIDIA NIM over gRPC and HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    serve = commands.add_parser(
        "serve",
        help="run the sidecar (gRPC and HTTP in one process)",
        description=(
            "Run the sidecar. Settings come from RERANKER_* and NVIDIA_APIKEY (see the README's "
            "Configuration); these flags win over them."
        ),
    )
    serve.add_argument("--host", help="address to listen on (RERANKER_HOST, default 0.0.0.0)")
    serve.add_argument("--http-port", type=int, help="HTTP port (RERANKER_HTTP_PORT, default 8080)")
    serve.add_argument(
        "--grpc-port", type=int, help="gRPC port (RERANKER_GRPC_PORT, default 50051)"
    )

    rank = commands.add_parser(
        "rank",
        formatter_class=defaults,
        help="rank documents through a running sidecar (gRPC)",
    )
    rank.description = "Rank documents for a query through a running sidecar, best first."
    rank.add_argument("--target", default="localhost:50051", help="the sidecar's gRPC HOST:PORT")
    rank.add_argument("--query", required=True, help="what the documents are ranked against")
    rank.add_argument("--model", help="NIM model (default: the sidecar's RERANKER_MODEL)")
    rank.add_argument("--base-url", help="NIM base URL (default: the sidecar's RERANKER_BASE_URL)")
    rank.add_argument(
        "--truncate", choices=TRUNCATE_VALUES, help="what NIM does with over-long passages"
    )
    rank.add_argument("--top-n", type=int, help="print only the best N (default: all)")
    rank.add_argument(
        "--api-key",
        default=os.environ.get("NVIDIA_APIKEY"),
        help="NIM key for this call, instead of the sidecar's (default: $NVIDIA_APIKEY, if set)",
    )
    rank.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    rank.add_argument("--tls", action="store_true", help="connect over TLS")
    rank.add_argument("--tls-ca", type=Path, help="PEM file of the CA to trust (implies --tls)")
    rank.add_argument(
        "--token",
        default=os.environ.get("RERANKER_AUTH_TOKEN"),
        help="the sidecar's caller token (default: $RERANKER_AUTH_TOKEN, if set)",
    )
    rank.add_argument("documents", nargs="+", metavar="DOC", help="the documents to rank")

    commands.add_parser(
        "healthcheck",
        help="exit 0 if the local sidecar is ready (GET /.well-known/ready), else 1",
        description="Probe the local sidecar's readiness on RERANKER_HTTP_PORT.",
    )

    emulate = commands.add_parser(
        "emulate-nim",
        formatter_class=defaults,
        description="Run a NIM ranking API emulator: NIM's shapes and checks, lexical scores.",
        help="run the NIM ranking API emulator (lexical scoring, for tests and offline use)",
    )
    emulate.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulate.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free)")
    emulate.add_argument("--api-key", help="require this Bearer key (default: none required)")
    emulate.add_argument(
        "--delay-ms", type=float, default=0.0, help="latency added to every call, in ms"
    )
    emulate.add_argument(
        "--tail-ms", type=float, default=0.0, help="latency added to a share of calls, in ms"
    )
    emulate.add_argument(
        "--tail-share",
        type=_share,
        default=0.0,
        help="the share of calls (0 to 1, drawn at random) --tail-ms delays",
    )
    proto = commands.add_parser(
        "proto",
        help="print the path of the gRPC API's .proto file (or its content with --print)",
        description="Where the .proto of reranker_nvidia.v1.RerankerService is installed.",
    )
    proto.add_argument("--print", action="store_true", help="print the file's content instead")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "rank":
        return _rank(args)
    if args.command == "healthcheck":
        return _healthcheck()
    if args.command == "proto":
        return _proto(args)
    return _emulate(args)


def _serve(args: argparse.Namespace) -> int:
    from reranker_nvidia.core.upstream.routing.table import EndpointTableError
    from reranker_nvidia.server.assembly import build_core
    from reranker_nvidia.server.collector import settle_collector
    from reranker_nvidia.server.files import raise_file_limit
    from reranker_nvidia.server.sidecar import SidecarServer

    raise_file_limit()
    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("host", args.host),
            ("http_port", args.http_port),
            ("grpc_port", args.grpc_port),
        )
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        for problem in error.errors():
            print(f"reranker-nvidia: {_settings_problem(problem, overrides)}", file=sys.stderr)
        return 2
    try:
        core = build_core(settings)
    except EndpointTableError as error:
        print(f"reranker-nvidia: {error}", file=sys.stderr)
        return 2
    flush_logs = logs.configure(settings.log_level, settings.log_format, core.secrets)
    server = SidecarServer(settings, core)
    settle_collector()
    try:
        _run(server.serve_until_signalled())
    except StartupError as error:
        flush_logs()
        print(f"reranker-nvidia: {error}", file=sys.stderr)
        return 2
    finally:
        flush_logs()
    return 0


_SECRET_FIELDS = frozenset({"api_key", "auth_token", "cache_url", "cache_password", "cache_secret"})


def _settings_problem(problem: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """One line naming the variable (and flag) to change, and what it accepts."""
    message = str(problem["msg"]).removeprefix("Value error, ")
    if not problem["loc"]:
        return f"invalid settings: {message}"
    field = str(problem["loc"][0])
    variable = KEY_VARIABLES[0] if field == "api_key" else f"RERANKER_{field.upper()}"
    if field in overrides:
        variable = f"--{field.replace('_', '-')} / {variable}"
    given = "" if field in _SECRET_FIELDS else f" (got {problem.get('input')!r})"
    return f"invalid setting {variable}: {message}{given}"


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (it is on Linux and macOS), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _healthcheck() -> int:
    """For container HEALTHCHECKs: probes readiness on the port the settings name."""
    import ssl
    import urllib.error
    import urllib.request

    settings = Settings()
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(
        settings.host, f"[{settings.host}]" if ":" in settings.host else settings.host
    )
    scheme, context = "http", None
    if settings.tls_cert is not None:
        # Our own listener, by address, carrying no secret: whoever issued the certificate,
        # the probe only asks whether the server answers ready.
        scheme, context = "https", ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            f"{scheme}://{host}:{settings.http_port}/.well-known/ready", timeout=2, context=context
        ) as response:
            ready = response.status == 204
    except (urllib.error.URLError, OSError):
        ready = False
    print("ready" if ready else "not ready")
    return 0 if ready else 1


def _rank(args: argparse.Namespace) -> int:
    from reranker_nvidia.client import RerankerClient

    try:
        with RerankerClient(
            args.target,
            timeout_s=args.timeout,
            tls=args.tls,
            root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
            token=args.token,
        ) as client:
            ranked = client.rank(
                args.query,
                args.documents,
                model=args.model,
                base_url=args.base_url,
                truncate=args.truncate,
                top_n=args.top_n,
                api_key=args.api_key,
            )
    except RerankError as error:
        print(f"reranker-nvidia: {error.code.value}: {error.message}", file=sys.stderr)
        return 1
    for document in ranked.documents:
        print(f"{document.score:10.4f}  {document.document}")
    return 0


def _emulate(args: argparse.Namespace) -> int:
    from reranker_nvidia.emulator import EmulatorState, create_emulator_app
    from reranker_nvidia.server.asgi import AsgiServer

    logs.configure("INFO", "text")
    state = EmulatorState(
        api_key=args.api_key,
        delay_s=args.delay_ms / 1000,
        tail_share=args.tail_share,
        tail_delay_s=args.tail_ms / 1000,
    )

    async def run() -> None:
        server = AsgiServer(create_emulator_app(state), args.host, args.port, log_level="info")
        stop = stop_signal()
        try:
            await server.start()
        except OSError as error:
            raise StartupError(
                f"cannot listen on {args.host}:{args.port}: {error.strerror or error} "
                "(--host, --port)"
            ) from None
        logging.getLogger("reranker_nvidia.emulator").info(
            "NIM emulator on http://%s:%d/v1/ranking", args.host, server.port
        )
        await stop.wait()
        await server.stop()

    try:
        _run(run())
    except StartupError as error:
        print(f"reranker-nvidia: {error}", file=sys.stderr)
        return 2
    return 0


def _proto(args: argparse.Namespace) -> int:
    from importlib.resources import files

    path = files("reranker_nvidia") / "v1" / PROTO_FILE
    print(path.read_text() if args.print else path, end="" if args.print else "\n")
    return 0
