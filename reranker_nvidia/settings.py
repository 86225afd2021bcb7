"""Process configuration, read once at start-up from the environment (and CLI overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from reranker_nvidia.core.score_scale import ScoreScales
from reranker_nvidia.core.targets.model_ids import check_model_id
from reranker_nvidia.errors import RerankError
from reranker_nvidia.nim_schema import NIM_MAX_PASSAGES, NimTruncate

DEFAULT_MODEL = "nvidia/rerank-qa-mistral-4b"
HOSTED_BASE_URL = "https://ai.api.nvidia.com"
# Where the server's key is read from, first found wins.
KEY_VARIABLES = ("NVIDIA_APIKEY", "NVIDIA_API_KEY", "NVIDIA_NIM_API_KEY")
MIN_CACHE_SECRET_CHARS = 32


class Settings(BaseSettings):
    """Everything the sidecar reads from its environment.

    Every field but the key is read from ``RERANKER_<FIELD>``; the key is read from
    ``NVIDIA_APIKEY``, ``NVIDIA_API_KEY`` or ``NVIDIA_NIM_API_KEY``, first found wins. The key is
    a ``SecretStr`` so that no repr, log line or error message can show it by accident.
    """

    model_config = SettingsConfigDict(
        env_prefix="RERANKER_",
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )

    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(*KEY_VARIABLES),
    )
    base_url: str = HOSTED_BASE_URL
    model: str = DEFAULT_MODEL
    models: Annotated[tuple[str, ...], NoDecode] = ()
    truncate: NimTruncate | None = None
    host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    max_passages_per_call: int = Field(default=NIM_MAX_PASSAGES, ge=1)
    max_documents: int = Field(default=10_000, ge=1)
    max_properties: int = Field(default=16, ge=1)
    max_text_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_upstream_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    # Bounds on every HTTP request before any work is done on it (wire/limits.py).
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_url_bytes: int = Field(default=8 * 1024, ge=256)
    max_buffered_body_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int | None = Field(default=None, ge=8)
    upstream_concurrency: int = Field(default=16, ge=1)
    upstream_timeout_s: float = Field(default=30.0, gt=0)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    max_retry_after_s: float = Field(default=60.0, ge=0)
    retry_base_delay_s: float = Field(default=0.1, ge=0)
    retry_max_delay_s: float = Field(default=2.0, ge=0)
    max_in_flight: int = Field(default=256, ge=1)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    allowed_base_urls: Annotated[tuple[str, ...], NoDecode] = ()
    auth_token: SecretStr | None = None
    cache_size: int = Field(default=100_000, ge=0)
    cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    cache_ttl_s: float = Field(default=3600.0, gt=0)
    cache_scope: Literal["verified", "key", "shared"] = "verified"
    coalesce_window_ms: float = Field(default=3.0, ge=0)
    # Images (core/documents/images.py): decoded bytes per image and per request; which models
    # take them.
    max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_request_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    vl_models: Annotated[tuple[str, ...], NoDecode] = ()
    detect_image_blobs: bool = True
    score_scale: Annotated[ScoreScales, NoDecode] = ScoreScales()
    # Several NIM endpoints (core/upstream/): the table, the retry and hedge budgets, the
    # breaker, readiness polling, and answering in input order when every endpoint failed.
    endpoints_file: Path | None = None
    retry_budget: float = Field(default=0.2, ge=0, le=10)
    retry_budget_min_per_s: float = Field(default=3.0, ge=0)
    hedge_percentile: float | None = Field(default=None, gt=0, lt=100)
    hedge_budget: float = Field(default=0.1, ge=0, le=1)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_open_s: float = Field(default=5.0, gt=0)
    health_interval_s: float = Field(default=5.0, gt=0)
    fail_open: bool = False
    # Several replicas: the pair cache and NIM budget in Redis or Valkey.
    cache_url: SecretStr | None = None
    cache_password: SecretStr | None = None
    # Names and authenticates everything in the shared store; the same in every replica.
    cache_secret: SecretStr | None = None
    cache_timeout_ms: float = Field(default=25.0, gt=0, le=10_000)
    upstream_rpm: int | None = Field(default=None, ge=1)
    upstream_tpm: int | None = Field(default=None, ge=1)
    log_format: Literal["text", "json"] = "text"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator(
        "api_key", "auth_token", "cache_url", "cache_password", "cache_secret", mode="before"
    )
    @classmethod
    def _blank_secret_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("cache_url")
    @classmethod
    def _cache_url_is_redis(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = value.get_secret_value().partition("://")[0].lower()
            if scheme not in ("redis", "rediss", "unix"):
                raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("endpoints_file", mode="before")
    @classmethod
    def _blank_path_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("cache_scope", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("truncate", mode="before")
    @classmethod
    def _normalise_truncate(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().upper()
            return value or None
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("RERANKER_BASE_URL must start with http:// or https://")
        return value

    @field_validator("model")
    @classmethod
    def _model_is_named(cls, value: str) -> str:
        """Normalised once, here: every part reads the model as NIM's body wants it."""
        if not value.strip():
            raise ValueError("RERANKER_MODEL must name a model, e.g. " + DEFAULT_MODEL)
        return _model_id(value)

    @field_validator("models")
    @classmethod
    def _models_are_normalised(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_model_id(model) for model in value)

    @field_validator("score_scale", mode="before")
    @classmethod
    def _parse_score_scale(cls, value: object) -> object:
        return ScoreScales.parse(value) if isinstance(value, str) else value

    @field_validator("vl_models")
    @classmethod
    def _vl_models_are_model_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_model_id(model) for model in value)

    @field_validator("allowed_base_urls", "models", "vl_models", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value

    @field_validator("allowed_base_urls")
    @classmethod
    def _urls_are_http(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} in RERANKER_ALLOWED_BASE_URLS is not an http(s) URL")
        return value

    @field_validator("cache_secret")
    @classmethod
    def _cache_secret_is_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_CACHE_SECRET_CHARS:
            raise ValueError(
                f"must be at least {MIN_CACHE_SECRET_CHARS} characters (e.g. `openssl rand "
                "-hex 32`)"
            )
        return value

    @model_validator(mode="after")
    def _a_shared_store_needs_its_secret(self) -> Settings:
        if self.cache_url is not None and self.cache_secret is None:
            raise ValueError(
                "RERANKER_CACHE_URL is set but RERANKER_CACHE_SECRET is not: every replica "
                "sharing the store needs the same secret (at least "
                f"{MIN_CACHE_SECRET_CHARS} characters, e.g. `openssl rand -hex 32`), so that "
                "nothing another program writes there can pass for a score or a verified key"
            )
        return self

    @model_validator(mode="after")
    def _endpoints_file_exists(self) -> Settings:
        if self.endpoints_file is not None and not self.endpoints_file.is_file():
            raise ValueError(f"RERANKER_ENDPOINTS_FILE {self.endpoints_file} does not exist")
        return self

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("RERANKER_TLS_CERT and RERANKER_TLS_KEY must be set together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        return self

    def secret_values(self) -> list[str]:
        """Every secret the settings hold, to be masked wherever text leaves the process:
        the server's key, the caller token, the store's password (given or in its URL)."""
        values = [
            secret.get_secret_value()
            for secret in (self.api_key, self.auth_token, self.cache_password, self.cache_secret)
            if secret is not None
        ]
        if self.cache_url is not None:
            password = urlsplit(self.cache_url.get_secret_value()).password
            if password:
                values.append(password)
        return values

    def server_key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None


def _model_id(value: str) -> str:
    try:
        return check_model_id(value)
    except RerankError as error:
        raise ValueError(error.message.split(": ", 1)[-1]) from None
