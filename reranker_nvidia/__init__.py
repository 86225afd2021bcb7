"""reranker-nvidia: rerank vector, keyword and hybrid search hits with NVIDIA NIM."""

__version__ = "0.1.0"

__all__ = ["__version__"]
