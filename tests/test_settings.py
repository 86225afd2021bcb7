"""Configuration from the environment, with CLI flags on top."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reranker_nvidia.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.base_url == "https://ai.api.nvidia.com"
    assert settings.model == "nvidia/rerank-qa-mistral-4b"
    assert (settings.host, settings.http_port, settings.grpc_port) == ("0.0.0.0", 8080, 50051)
    assert settings.max_passages_per_call == 512
    assert settings.truncate is None
    assert settings.server_key() is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"NVIDIA_APIKEY": "a", "NVIDIA_API_KEY": "b", "NVIDIA_NIM_API_KEY": "c"}, "a"),
        ({"NVIDIA_API_KEY": "b", "NVIDIA_NIM_API_KEY": "c"}, "b"),
        ({"NVIDIA_NIM_API_KEY": "c"}, "c"),
        ({"NVIDIA_APIKEY": "  "}, None),
    ],
)
def test_key_variables_first_found_wins(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str | None
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().server_key() == expected


def test_key_is_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_APIKEY", "nvapi-very-secret")
    assert "nvapi-very-secret" not in repr(Settings())
    assert "nvapi-very-secret" not in str(Settings().model_dump())


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKER_HTTP_PORT", "9000")
    monkeypatch.setenv("RERANKER_GRPC_PORT", "9001")
    monkeypatch.setenv("RERANKER_TRUNCATE", "end")
    monkeypatch.setenv("RERANKER_MAX_PASSAGES_PER_CALL", "100")
    settings = Settings(http_port=7000)
    assert (settings.http_port, settings.grpc_port) == (7000, 9001)
    assert settings.truncate == "END"
    assert settings.max_passages_per_call == 100


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RERANKER_TRUNCATE", "START"),
        ("RERANKER_BASE_URL", "nim:8000"),
        ("RERANKER_HTTP_PORT", "70000"),
        ("RERANKER_MAX_PASSAGES_PER_CALL", "0"),
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_extra_models_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKER_MODELS", " acme/a, ,acme/b ")
    assert Settings().models == ("acme/a", "acme/b")


def test_an_empty_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKER_MODEL", " ")
    with pytest.raises(ValidationError, match="RERANKER_MODEL must name a model"):
        Settings()
