"""The clients people install from PyPI, pointed at the sidecar by base URL alone."""

from __future__ import annotations

import os

import pytest

# Keep the libraries off the network: LiteLLM's model cost map, LangChain's and Haystack's
# telemetry. Each library is imported in the tests that drive it: importing them all costs
# seconds, which a run of other tests should not pay.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ["NVIDIA_USAGE_TELEMETRY_ENABLED"] = "false"
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"

from reranker_nvidia.emulator import lexical_logit, terms
from tests.support import REQUEST_KEY, SERVER_KEY, Emulator, Sidecar

QUERY = "what is the memory bandwidth of the gpu"
TEXTS = [
    "The A100 debuts fast memory for the largest models.",
    "Bananas are rich in potassium.",
    "The H100 GPU has 3 TB/s of memory bandwidth.",
    "GPU memory bandwidth matters for the memory bound work of the GPU.",
]


def best_first(texts: list[str]) -> list[int]:
    scores = [lexical_logit(terms(QUERY), terms(text)) for text in texts]
    return sorted(range(len(texts)), key=lambda i: -scores[i])


def test_langchain_nvidia_rerank_without_a_model(sidecar: Sidecar, emulator: Emulator) -> None:
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    with pytest.warns(UserWarning, match="Default model is set as"):
        reranker = NVIDIARerank(base_url=f"{sidecar.http_url}/v1", top_n=3)
    assert reranker.model == "nvidia/rerank-qa-mistral-4b", "picked from GET /v1/models"
    ranked = reranker.compress_documents(
        documents=[Document(page_content=text) for text in TEXTS], query=QUERY
    )
    assert [doc.page_content for doc in ranked] == [TEXTS[i] for i in best_first(TEXTS)[:3]]
    scores = [doc.metadata["relevance_score"] for doc in ranked]
    assert scores == sorted(scores, reverse=True)
    assert emulator.state.calls[-1].authorization == f"Bearer {SERVER_KEY}"


def test_langchain_key_and_more_than_its_batch(sidecar: Sidecar, emulator: Emulator) -> None:
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    reranker = NVIDIARerank(
        base_url=f"{sidecar.http_url}/v1",
        model="nvidia/llama-3.2-nv-rerankqa-1b-v2",
        api_key=REQUEST_KEY,
        top_n=5,
        truncate="END",
    )
    texts = TEXTS * 200
    ranked = reranker.compress_documents(
        documents=[Document(page_content=text) for text in texts], query=QUERY
    )
    assert len(ranked) == 5
    assert all(doc.page_content == TEXTS[best_first(TEXTS)[0]] for doc in ranked[:1])
    assert {call.authorization for call in emulator.state.calls} == {f"Bearer {REQUEST_KEY}"}
    assert {call.model for call in emulator.state.calls} == {"nvidia/llama-3.2-nv-rerankqa-1b-v2"}
    assert {call.truncate for call in emulator.state.calls} == {"END"}


def test_litellm_nvidia_nim_rerank(sidecar: Sidecar, emulator: Emulator) -> None:
    import litellm

    response = litellm.rerank(
        model="nvidia_nim/nvidia/llama-3_2-nv-rerankqa-1b-v2",
        api_base=sidecar.http_url,
        api_key=REQUEST_KEY,
        query=QUERY,
        documents=TEXTS,
        top_n=2,
    )
    assert [result["index"] for result in response.results] == best_first(TEXTS)[:2]
    call = emulator.state.calls[-1]
    assert call.authorization == f"Bearer {REQUEST_KEY}"
    assert call.model == "nvidia/llama-3.2-nv-rerankqa-1b-v2"


def test_litellm_cohere_rerank_against_v1_rerank(sidecar: Sidecar, emulator: Emulator) -> None:
    import litellm

    response = litellm.rerank(
        model="cohere/nvidia/rerank-qa-mistral-4b",
        api_base=sidecar.http_url,
        api_key=REQUEST_KEY,
        query=QUERY,
        documents=TEXTS,
        top_n=3,
    )
    assert [result["index"] for result in response.results] == best_first(TEXTS)[:3]
    assert emulator.state.calls[-1].authorization == f"Bearer {REQUEST_KEY}"


def test_llamaindex_without_a_key_uses_the_sidecars(sidecar: Sidecar, emulator: Emulator) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.nvidia_rerank import NVIDIARerank as LlamaIndexRerank

    # Any model the sidecar lists is accepted, not only LlamaIndex's own table's.
    reranker = LlamaIndexRerank(
        base_url=f"{sidecar.http_url}/v1", model="nvidia/llama-nemotron-rerank-1b-v2", top_n=3
    )
    nodes = [NodeWithScore(node=TextNode(text=text), score=0.0) for text in TEXTS]
    ranked = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [node.node.get_content() for node in ranked] == [TEXTS[i] for i in best_first(TEXTS)[:3]]
    [call] = emulator.state.calls
    assert call.authorization == f"Bearer {SERVER_KEY}", "NO_API_KEY_PROVIDED is no key"
    assert call.model == "nvidia/llama-nemotron-rerank-1b-v2"


def test_llamaindex_with_its_own_key(sidecar: Sidecar, emulator: Emulator) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.nvidia_rerank import NVIDIARerank as LlamaIndexRerank

    reranker = LlamaIndexRerank(
        base_url=f"{sidecar.http_url}/v1", model="nvidia/rerank-qa-mistral-4b", api_key=REQUEST_KEY
    )
    nodes = [NodeWithScore(node=TextNode(text=text), score=0.0) for text in TEXTS]
    ranked = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert ranked[0].node.get_content() == TEXTS[best_first(TEXTS)[0]]
    assert {call.authorization for call in emulator.state.calls} == {f"Bearer {REQUEST_KEY}"}


@pytest.mark.parametrize("api_key", [None, REQUEST_KEY])
def test_haystack_nvidia_ranker(api_key: str | None, sidecar: Sidecar, emulator: Emulator) -> None:
    from haystack import Document as HaystackDocument
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.nvidia import NvidiaRanker

    ranker = NvidiaRanker(
        api_url=f"{sidecar.http_url}/v1",
        model="nvidia/llama-3.2-nv-rerankqa-1b-v2",
        api_key=Secret.from_token(api_key) if api_key else None,
        top_k=2,
    )
    ranker.warm_up()
    result = ranker.run(query=QUERY, documents=[HaystackDocument(content=t) for t in TEXTS])
    assert [doc.content for doc in result["documents"]] == [TEXTS[i] for i in best_first(TEXTS)[:2]]
    [call] = emulator.state.calls
    assert call.authorization == f"Bearer {api_key or SERVER_KEY}"


def test_langchain_without_a_key_uses_the_sidecars(sidecar: Sidecar, emulator: Emulator) -> None:
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    reranker = NVIDIARerank(
        base_url=f"{sidecar.http_url}/v1", model="nvidia/llama-nemotron-rerank-1b-v2", top_n=2
    )
    ranked = reranker.compress_documents(
        documents=[Document(page_content=text) for text in TEXTS], query=QUERY
    )
    assert [doc.page_content for doc in ranked] == [TEXTS[i] for i in best_first(TEXTS)[:2]]
    [call] = emulator.state.calls
    assert call.authorization == f"Bearer {SERVER_KEY}", "********** is no key"
