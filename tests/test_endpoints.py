"""Endpoint resolution: every base URL form and model row of the NIM routing table."""

from __future__ import annotations

import pytest

from reranker_nvidia.core.targets.endpoints import resolve_endpoint
from reranker_nvidia.core.targets.model_ids import normalise_model

HOSTED_LEGACY = "https://ai.api.nvidia.com/v1/retrieval/nvidia/reranking"
HOSTED_LLAMA = "https://ai.api.nvidia.com/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking"
LLAMA = "nvidia/llama-3.2-nv-rerankqa-1b-v2"


@pytest.mark.parametrize(
    ("base_url", "model", "expected"),
    [
        # Hosted, legacy model (both ids), every way of writing the base URL.
        ("https://ai.api.nvidia.com", "nvidia/rerank-qa-mistral-4b", HOSTED_LEGACY),
        ("https://ai.api.nvidia.com/", "nvidia/rerank-qa-mistral-4b", HOSTED_LEGACY),
        ("https://ai.api.nvidia.com/v1", "nvidia/rerank-qa-mistral-4b", HOSTED_LEGACY),
        ("https://ai.api.nvidia.com/v1/", "nvidia/rerank-qa-mistral-4b", HOSTED_LEGACY),
        ("https://ai.api.nvidia.com/v1/retrieval", "nvidia/rerank-qa-mistral-4b", HOSTED_LEGACY),
        (HOSTED_LEGACY, "nvidia/rerank-qa-mistral-4b", HOSTED_LEGACY),
        ("https://ai.api.nvidia.com", "nv-rerank-qa-mistral-4b:1", HOSTED_LEGACY),
        # Hosted, any other model: its own path, periods as underscores in the path only.
        ("https://ai.api.nvidia.com", LLAMA, HOSTED_LLAMA),
        ("https://ai.api.nvidia.com/v1", LLAMA, HOSTED_LLAMA),
        ("https://ai.api.nvidia.com", "nvidia/llama-3_2-nv-rerankqa-1b-v2", HOSTED_LLAMA),
        (HOSTED_LLAMA, LLAMA, HOSTED_LLAMA),
        (
            "https://ai.api.nvidia.com",
            "nvidia/nv-rerankqa-mistral-4b-v3",
            "https://ai.api.nvidia.com/v1/retrieval/nvidia/nv-rerankqa-mistral-4b-v3/reranking",
        ),
        # A full endpoint is used as written, whatever the model.
        (HOSTED_LEGACY, LLAMA, HOSTED_LEGACY),
        # Self-hosted NIM: /v1/ranking whatever the model.
        ("http://nim:8000", LLAMA, "http://nim:8000/v1/ranking"),
        ("http://nim:8000/", LLAMA, "http://nim:8000/v1/ranking"),
        ("http://nim:8000/v1", LLAMA, "http://nim:8000/v1/ranking"),
        ("http://nim:8000/v1/", LLAMA, "http://nim:8000/v1/ranking"),
        ("http://nim:8000/v1/ranking", LLAMA, "http://nim:8000/v1/ranking"),
        ("http://nim:8000", "nvidia/rerank-qa-mistral-4b", "http://nim:8000/v1/ranking"),
        ("https://nim.example.com/prefix", LLAMA, "https://nim.example.com/prefix/v1/ranking"),
        # A sidecar or proxy that exposes the hosted-style path is used as written.
        (
            "http://sidecar:8080/v1/retrieval/nvidia/reranking",
            LLAMA,
            "http://sidecar:8080/v1/retrieval/nvidia/reranking",
        ),
        ("  http://nim:8000  ", LLAMA, "http://nim:8000/v1/ranking"),
    ],
)
def test_resolve_endpoint(base_url: str, model: str, expected: str) -> None:
    assert resolve_endpoint(base_url, model) == expected


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("nvidia/llama-3_2-nv-rerankqa-1b-v2", "nvidia/llama-3.2-nv-rerankqa-1b-v2"),
        ("nvidia/llama-3.2-nv-rerankqa-1b-v2", "nvidia/llama-3.2-nv-rerankqa-1b-v2"),
        ("nvidia/rerank-qa-mistral-4b", "nvidia/rerank-qa-mistral-4b"),
        ("nv-rerank-qa-mistral-4b:1", "nv-rerank-qa-mistral-4b:1"),
        ("org/my_model-1_5", "org/my_model-1.5"),
        (" nvidia/rerank-qa-mistral-4b ", "nvidia/rerank-qa-mistral-4b"),
    ],
)
def test_normalise_model(written: str, normalised: str) -> None:
    assert normalise_model(written) == normalised
