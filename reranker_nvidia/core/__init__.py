"""The core: ranking policy and everything it needs to reach NIM. Surfaces use it through the
names exported here, never through its modules."""

from reranker_nvidia.core.admission import Admission
from reranker_nvidia.core.coalescer import Coalescer
from reranker_nvidia.core.documents.hits import collection_options, rerank_hits, rerank_properties
from reranker_nvidia.core.documents.images import Image, ImageBudget, parse_image
from reranker_nvidia.core.documents.passages import ImagePassage, Passage, all_text
from reranker_nvidia.core.metrics import CONTENT_TYPE, Metrics
from reranker_nvidia.core.ranker import Ranker, Ranking, RequestLimits, check_top_n
from reranker_nvidia.core.request_context import (
    REQUEST_ID_HEADER,
    new_request_id,
    request_id,
    request_secrets,
)
from reranker_nvidia.core.score_scale import Surface
from reranker_nvidia.core.targets.target import RankOptions
from reranker_nvidia.core.trust.caller_token import (
    MISSING_TOKEN_MESSAGE,
    OPEN_GRPC_SERVICE,
    OPEN_HTTP_PATHS,
    TOKEN_HEADER,
    token_matches,
)
from reranker_nvidia.core.trust.keys import usable_key

__all__ = [
    "CONTENT_TYPE",
    "MISSING_TOKEN_MESSAGE",
    "OPEN_GRPC_SERVICE",
    "OPEN_HTTP_PATHS",
    "REQUEST_ID_HEADER",
    "TOKEN_HEADER",
    "Admission",
    "Coalescer",
    "Image",
    "ImageBudget",
    "ImagePassage",
    "Metrics",
    "Passage",
    "RankOptions",
    "Ranker",
    "Ranking",
    "RequestLimits",
    "Surface",
    "all_text",
    "check_top_n",
    "collection_options",
    "new_request_id",
    "parse_image",
    "request_id",
    "request_secrets",
    "rerank_hits",
    "rerank_properties",
    "token_matches",
    "usable_key",
]
