"""The endpoint table: which NIM endpoints serve which models, in which order, with which key.

``RERANKER_ENDPOINTS_FILE`` names a TOML file of ``[[endpoints]]`` entries::

    [[endpoints]]
    url = "http://nim-0:8000"   # any base-URL form RERANKER_BASE_URL accepts
    tier = 1                    # lower tiers are tried first (default 1)
    weight = 1                  # share within the tier (default 1)
    models = ["nvidia/llama-nemotron-rerank-1b-v2"]  # default: every model
    api_key_env = "NIM_0_KEY"   # the variable holding its key (default: the server key;
                                # false: send no key)
    name = "nim-0"              # its label in logs and metrics (default: host:port)
    health_path = "/v1/health/ready"  # self-hosted only; false: do not poll it

Every mistake is refused at start-up with one line naming the file, the entry (counted from
0, as ``endpoints[0]``) and the field. No message shows a key.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reranker_nvidia.core.targets.endpoints import is_hosted
from reranker_nvidia.core.targets.model_ids import check_model_id
from reranker_nvidia.core.trust.ssrf import parse_base_url
from reranker_nvidia.errors import RerankError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

SETTING = "RERANKER_ENDPOINTS_FILE"
READY_PATH = "/v1/health/ready"
MAX_ENDPOINTS = 64
MAX_FILE_BYTES = 1024 * 1024
MAX_WEIGHT = 1000.0
FIELDS = ("url", "tier", "weight", "models", "api_key_env", "name", "health_path")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_PATH = re.compile(r"/[\x21-\x7e]{0,255}")


class EndpointTableError(Exception):
    """The endpoint table cannot be used; ``str()`` is the one line to print before exiting."""


# Makes the error for one field of the entry being checked: (field, reason) -> error.
_Complaint = Callable[[str, str], EndpointTableError]


@dataclass(frozen=True)
class EndpointSpec:
    """One entry of the table, checked.

    The key to send is ``key(server_key)``: the server's own key unless the entry names a
    variable (``api_key_env``, whose value is ``api_key``) or says to send none.
    """

    index: int
    url: str
    name: str
    tier: int = 1
    weight: float = 1.0
    models: frozenset[str] | None = None
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    uses_server_key: bool = True
    self_hosted: bool = True
    health_path: str | None = READY_PATH

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    def key(self, server_key: str | None) -> str | None:
        return server_key if self.uses_server_key else self.api_key


def load_endpoint_table(path: Path, environ: Mapping[str, str]) -> tuple[EndpointSpec, ...]:
    """The checked entries of the table at ``path``, in file order, keys read from
    ``environ``; ``EndpointTableError`` for the first mistake."""
    document = _parse(path)
    unknown = [key for key in document if key != "endpoints"]
    if unknown:
        raise _error(path, unknown[0], "unknown key (the file holds [[endpoints]] entries only)")
    entries = document.get("endpoints")
    if entries is None:
        raise _error(path, "endpoints", "missing (add at least one [[endpoints]] entry)")
    if not isinstance(entries, list):
        raise _error(
            path, "endpoints", f"must be an array of tables, [[endpoints]] (got {_shown(entries)})"
        )
    if not entries:
        raise _error(path, "endpoints", "empty (add at least one [[endpoints]] entry)")
    if len(entries) > MAX_ENDPOINTS:
        raise _error(path, "endpoints", f"at most {MAX_ENDPOINTS} entries (got {len(entries)})")
    specs = tuple(_entry(path, index, entry, environ) for index, entry in enumerate(entries))
    owners: dict[str, int] = {}
    for spec in specs:
        owner = owners.setdefault(spec.name, spec.index)
        if owner != spec.index:
            raise _error(
                path,
                f"endpoints[{spec.index}].name",
                f"{_shown(spec.name)} is also the name of endpoints[{owner}]"
                " (give each endpoint a distinct name)",
            )
    return specs


def _parse(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _error(path, None, f"cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise _error(path, None, f"larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(path, None, f"not UTF-8 text (byte {exc.start})") from None
    try:
        document: dict[str, object] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _error(path, None, f"not valid TOML: {exc}") from None
    return document


def _entry(path: Path, index: int, entry: object, environ: Mapping[str, str]) -> EndpointSpec:
    where = f"endpoints[{index}]"
    if not isinstance(entry, dict):
        raise _error(path, where, f"must be a table (got {_shown(entry)})")
    for key in entry:
        if key not in FIELDS:
            raise _error(path, f"{where}.{key}", f"unknown field (expected {', '.join(FIELDS)})")

    def bad(field: str, reason: str) -> EndpointTableError:
        return _error(path, f"{where}.{field}", reason)

    url = entry.get("url")
    if url is None:
        raise bad("url", "missing (every endpoint needs one)")
    if not isinstance(url, str):
        raise bad("url", f"must be a string (got {_shown(url)})")
    url = url.strip()
    try:
        parts = parse_base_url(url)
    except RerankError as exc:
        raise bad("url", exc.message.removeprefix("base_url: ")) from None
    hosted = is_hosted(url)

    tier = entry.get("tier", 1)
    if not isinstance(tier, int) or isinstance(tier, bool) or tier < 1:
        raise bad("tier", f"must be an integer of at least 1 (got {_shown(tier)})")

    weight = entry.get("weight", 1.0)
    if (
        not isinstance(weight, (int, float))
        or isinstance(weight, bool)
        or not 0 < weight <= MAX_WEIGHT
    ):
        raise bad(
            "weight", f"must be a number above 0 and at most {MAX_WEIGHT:g} (got {_shown(weight)})"
        )

    models = _models(entry.get("models"), bad, where)

    api_key_env = entry.get("api_key_env")
    api_key: str | None = None
    uses_server_key = api_key_env is None
    if api_key_env is False:
        api_key_env = None
    elif api_key_env is not None:
        if not isinstance(api_key_env, str) or not _ENV_NAME.fullmatch(api_key_env):
            raise bad(
                "api_key_env",
                "must be the name of an environment variable, or false to send no key"
                f" (got {_shown(api_key_env)})",
            )
        api_key = environ.get(api_key_env, "").strip()
        if not api_key:
            raise bad("api_key_env", f"{api_key_env} is not set or is blank")
        if not _HEADER_SAFE.fullmatch(api_key):
            raise bad("api_key_env", f"{api_key_env} holds a character a header cannot carry")

    name = entry.get("name")
    if name is None:
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    elif not isinstance(name, str) or not _NAME.fullmatch(name):
        raise bad(
            "name",
            "must be 1 to 64 letters, digits, '.', '_', ':' or '-', starting with a letter or"
            f" digit (got {_shown(name)})",
        )

    health_path = entry.get("health_path")
    if health_path is False or hosted:
        if health_path not in (None, False):
            raise bad("health_path", f"{parts.hostname} is not polled (self-hosted NIM only)")
        health_path = None
    elif health_path is None:
        health_path = READY_PATH
    elif not isinstance(health_path, str) or not _PATH.fullmatch(health_path):
        raise bad(
            "health_path",
            "must be a path starting with '/' (no spaces), or false not to poll"
            f" (got {_shown(health_path)})",
        )

    return EndpointSpec(
        index=index,
        url=url,
        name=name,
        tier=tier,
        weight=float(weight),
        models=models,
        api_key_env=api_key_env,
        api_key=api_key,
        uses_server_key=uses_server_key,
        self_hosted=not hosted,
        health_path=health_path,
    )


def _models(value: object, bad: _Complaint, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad("models", f"must be an array of model ids (got {_shown(value)})")
    if not value:
        raise bad("models", "empty (leave the field out to serve every model)")
    checked = set()
    for position, model in enumerate(value):
        field = f"models[{position}]"
        if not isinstance(model, str):
            raise bad(field, f"must be a string (got {_shown(model)})")
        try:
            checked.add(check_model_id(model, f"{where}.{field}"))
        except RerankError as exc:
            raise bad(field, exc.message.partition(": ")[2]) from None  # it names the field
    return frozenset(checked)


def _error(path: Path, where: str | None, reason: str) -> EndpointTableError:
    place = f"{where}: " if where else ""
    line = f"{SETTING} {path}: {place}{reason}"
    return EndpointTableError(" ".join(line.splitlines()))


def _shown(value: object) -> str:
    """A value as an error message may show it: short, on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"
