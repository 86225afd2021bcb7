"""The ranking policy: validate a request, resolve where it goes, serve what the cache knows,
and get the rest from NIM through the coalescer.

Every surface (gRPC, each HTTP contract) calls ``Ranker``; none of them resolves keys or
URLs, validates limits, chunks, or talks to NIM itself. The parts it uses are built by the
composition root (``reranker_nvidia.server``) and handed in.

With ``RERANKER_FAIL_OPEN`` on, a request whose endpoints all failed, or whose budget is
nearly spent, is answered in its documents' input order (the search engine's own) instead of
an error, marked ``fallback`` so each surface can say so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

from reranker_nvidia.core.admission import Admission
from reranker_nvidia.core.cache.score_cache import PairKey, ScoreCache
from reranker_nvidia.core.cache.shared_cache import Grant, SharedScores
from reranker_nvidia.core.coalescer import Coalescer
from reranker_nvidia.core.documents.images import (
    ImageBudget,
    ImageLimits,
    check_model_takes,
    detect_blob,
)
from reranker_nvidia.core.documents.passages import (
    ImagePassage,
    Passage,
    all_text,
    cache_item,
    image_cache_bytes,
)
from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.request_context import request_secrets
from reranker_nvidia.core.score_scale import ScoreScales, Surface, scaled
from reranker_nvidia.core.targets.catalog import Catalog
from reranker_nvidia.core.targets.target import RankOptions, Target, TargetResolver
from reranker_nvidia.core.timeouts import within
from reranker_nvidia.core.trust.digests import Digests
from reranker_nvidia.core.trust.redaction import scrub
from reranker_nvidia.core.trust.verified_keys import VerifiedKeys
from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.types import Usage

log = logging.getLogger("reranker_nvidia.ranker")

CacheScope = Literal["verified", "key", "shared"]
# Failures that mean NIM could not rank now, which fail-open answers in input order; a bad
# request, a refused key or a model NIM does not have stay errors.
_OUTAGES = frozenset(
    {ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED}
)
# Fail-open answers this long before the request's budget ends: a tenth of it, 1 s at most.
_FAIL_OPEN_MARGIN = 0.1
_FAIL_OPEN_MARGIN_MAX_S = 1.0


@dataclass(frozen=True)
class RequestLimits:
    """What one request may carry and take (``RERANKER_MAX_*``, ``RERANKER_REQUEST_TIMEOUT_S``)."""

    max_documents: int
    max_properties: int
    max_text_bytes: int
    request_timeout_s: float
    images: ImageLimits = field(default_factory=ImageLimits)


@dataclass(frozen=True)
class Ranking:
    """Scores for the documents of one request, in the documents' input order, on the
    surface's score scale."""

    scores: list[float]
    model: str
    usage: Usage = field(default_factory=Usage)
    top_n: int | None = None
    fallback: bool = False
    """Not ranked: NIM failed and fail-open answered in input order (scores descending)."""
    logits: list[float] | None = None
    """NIM's logits where ``scores`` are on another scale: the order is theirs, as a scale
    can make far-apart logits equal (a sigmoid is 1.0 for every logit above about 37)."""

    def order(self) -> list[int]:
        """Document indices best first, at most ``top_n``; ties keep input order (a reversed
        sort is stable too)."""
        by = self.scores if self.logits is None else self.logits
        best_first = sorted(range(len(by)), key=by.__getitem__, reverse=True)
        return best_first if self.top_n is None else best_first[: self.top_n]


@dataclass(eq=False)
class Ranker:
    targets: TargetResolver
    limits: RequestLimits
    cache: ScoreCache
    cache_scope: CacheScope
    verified_keys: VerifiedKeys
    coalescer: Coalescer
    admission: Admission
    digests: Digests
    metrics: Metrics
    shared: SharedScores | None = None
    """The second cache level, in the store replicas share (``RERANKER_CACHE_URL``)."""
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """The server's key, the caller token, the store's password: masked in every error."""
    catalog: Catalog = field(default_factory=Catalog)
    score_scales: ScoreScales = field(default_factory=ScoreScales)
    detect_image_blobs: bool = True
    fail_open: bool = False

    def resolve(self, options: RankOptions) -> Target:
        """Where a request with ``options`` would go, and with which key."""
        return self.targets.resolve(options)

    def image_budget(self, documents: int) -> ImageBudget:
        """What the images of one request of ``documents`` documents may take
        (``RERANKER_MAX_*IMAGE_BYTES``). A surface takes it before it reads a single image,
        so a request of more documents than ``RERANKER_MAX_DOCUMENTS`` is refused first."""
        check_count("documents", documents, self.limits.max_documents, "RERANKER_MAX_DOCUMENTS")
        return self.limits.images.budget()

    async def rank(
        self,
        query: str,
        documents: Sequence[Passage],
        options: RankOptions = RankOptions(),
        *,
        surface: Surface,
        top_n: int | None = None,
        budget_s: float | None = None,
        siblings_expected: bool = False,
        blobs: bool = False,
        images: ImageBudget | None = None,
    ) -> Ranking:
        """One score per document, in input order, on ``surface``'s scale; chunks above the
        per-call passage limit.

        ``top_n`` limits ``Ranking.order()``; every document is still scored. The request
        takes at most ``RERANKER_REQUEST_TIMEOUT_S``, or ``budget_s`` if the caller has less.
        ``siblings_expected``: more requests for the same query are on their way, so the
        upstream call may wait the coalescing window for them. ``blobs``: a text document that
        is wholly the base64 of an image is that image, when the model takes images (Weaviate
        sends a ``blob`` property so); ``images`` is the request's image budget so far.
        """
        text_only = all_text(documents)
        self.check_request(query, documents, text_only)
        check_top_n(top_n)
        target = self.targets.resolve(options)
        documents, text_only = self._with_images(target.model, documents, blobs, images, text_only)
        budget = self.limits.request_timeout_s
        if budget_s is not None:
            budget = min(budget, max(budget_s, 0.0))
        secrets = request_secrets.set((target.request_key,))
        deadline = time.monotonic() + budget
        work = budget
        if self.fail_open:
            work -= min(budget * _FAIL_OPEN_MARGIN, _FAIL_OPEN_MARGIN_MAX_S)
        try:
            async with self.admission.admit():
                ranking = await within(
                    work,
                    self._rank(
                        target, query, documents, top_n, deadline, siblings_expected, text_only
                    ),
                )
        except (TimeoutError, asyncio.TimeoutError):
            if self.fail_open:
                return self._passthrough(target, len(documents), top_n, surface, "its budget")
            raise RerankError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"the request did not finish within its budget of {budget:.3g} s",
            ) from None
        except RerankError as error:
            # Whatever an upstream echoed, no secret this request knows leaves in it.
            error.message = scrub(error.message, (*self.secrets, target.request_key))
            if self.fail_open and error.code in _OUTAGES and not error.rate_limited:
                return self._passthrough(target, len(documents), top_n, surface, error.message)
            raise
        finally:
            request_secrets.reset(secrets)
        scale = self.score_scales.of(surface)
        if scale == "logit":
            return ranking
        return Ranking(
            scaled(scale, ranking.scores),
            ranking.model,
            ranking.usage,
            top_n,
            logits=ranking.scores,
        )

    def _passthrough(
        self, target: Target, count: int, top_n: int | None, surface: Surface, why: str
    ) -> Ranking:
        """The documents in their input order, with strictly descending scores."""
        self.metrics.fallbacks.labels(surface).inc()
        log.warning("answered in input order (RERANKER_FAIL_OPEN): NIM failed: %s", why)
        order = [-float(i) for i in range(count)]
        scores = scaled(self.score_scales.of(surface), order)
        return Ranking(scores, target.model, Usage(), top_n, fallback=True, logits=order)

    def _with_images(
        self,
        model: str,
        documents: Sequence[Passage],
        blobs: bool,
        images: ImageBudget | None,
        text_only: bool,
    ) -> tuple[Sequence[Passage], bool]:
        """``documents`` with each Weaviate blob as the image it is (when the model takes
        images and detection is on), every image checked against what the model takes; and
        whether they are still all text."""
        takes_images = self.catalog.takes_images(model)
        if blobs and self.detect_image_blobs and takes_images:
            budget = images if images is not None else self.image_budget(len(documents))
            found: list[Passage] | None = None
            for index, document in enumerate(documents):
                if document.__class__ is not str:
                    continue
                image = detect_blob(document, f"documents[{index}]", budget)
                if image is not None:
                    if found is None:
                        found = list(documents)
                    found[index] = ImagePassage("", image)
            if found is not None:
                documents = found
                text_only = False
        if text_only:
            return documents, True
        for index, document in enumerate(documents):
            if document.__class__ is ImagePassage:
                image = document.image
                check_model_takes(image, model, f"documents[{index}].image", self.catalog)
        return documents, False

    def check_request(
        self, query: str, documents: Sequence[Passage], text_only: bool | None = None
    ) -> None:
        """The request's counts and text within their limits; ``text_only``: every document is
        a ``str`` (found out here when not given)."""
        if not query.strip():
            raise invalid_argument("query must not be empty")
        limits = self.limits
        check_count("documents", len(documents), limits.max_documents, "RERANKER_MAX_DOCUMENTS")
        text_bytes = _utf8_size("query", query)
        if text_only is None:
            text_only = all_text(documents)
        texts = (
            cast(Sequence[str], documents)
            if text_only
            else [d if d.__class__ is str else cast(ImagePassage, d).text for d in documents]
        )
        if all(map(str.isascii, texts)):
            text_bytes += sum(map(len, texts))
        else:
            # The field name is only spelled out for the rare text that is not ASCII.
            for index, text in enumerate(texts):
                text_bytes += _utf8_size(f"documents[{index}]", text)
        limit = limits.max_text_bytes
        if text_bytes > limit:
            raise invalid_argument(
                f"query and documents: {text_bytes} bytes of text, at most {limit} allowed "
                "per request (RERANKER_MAX_TEXT_BYTES)"
            )

    def pair_keys(
        self, target: Target, query: str, documents: Sequence[Passage], text_only: bool = False
    ) -> list[PairKey]:
        """The cache's name of each (query, document) pair of a request for ``target``;
        ``text_only``: every document is a ``str``. Names another replica reads (a shared store)
        are keyed digests; names only this process reads are its own keyed string hash, a fifth
        of the cost."""
        owner = target.request_key_id.hex() if self.cache_scope == "key" else ""
        truncate = target.truncate or ""
        prefix = f"{target.route.id}\x00{target.model}\x00{truncate}\x00{owner}\x00{query}"
        if self.shared is None:
            items = documents if text_only else [cache_item(document) for document in documents]
            local = self.digests.local_pairs(prefix, cast(Sequence[Hashable], items))
            if local is not None:
                return cast(list[PairKey], local)
        digests = self.digests
        named = digests.text(prefix)
        if text_only:
            encode = str.encode
            encoded = [encode(cast(str, d), "utf-8", "surrogatepass") for d in documents]
            return cast(list[PairKey], digests.pairs(named, encoded))
        names: list[PairKey] = [b""] * len(documents)
        texts = [i for i, d in enumerate(documents) if isinstance(d, str)]
        images = [i for i, d in enumerate(documents) if isinstance(d, ImagePassage)]
        text_names = digests.pairs(
            named, [cast(str, documents[i]).encode("utf-8", "surrogatepass") for i in texts]
        )
        image_names = digests.pairs(
            named,
            [image_cache_bytes(cast(ImagePassage, documents[i])) for i in images],
            kind=b"image-pair",
        )
        for index, name in zip(texts + images, text_names + image_names, strict=True):
            names[index] = name
        return names

    async def _rank(
        self,
        target: Target,
        query: str,
        documents: Sequence[Passage],
        top_n: int | None,
        deadline: float,
        siblings_expected: bool,
        text_only: bool,
    ) -> Ranking:
        """Cached scores first; only the misses go upstream, through the coalescer, which
        splits them into calls of at most ``max_passages_per_call`` sent concurrently.
        ``text_only``: every document is a ``str``."""
        if not documents:
            return Ranking([], target.model, top_n=top_n)
        keys = self.pair_keys(target, query, documents, text_only)
        found: list[float | None] = [None] * len(keys)
        trust = _Trust(self, target)
        cache = self.cache
        entries = cache.get_many(keys) if cache.enabled else ()
        if any(entries):
            readable = trust.readable
            for index, entry in enumerate(entries):
                if entry is not None and readable(entry[2]):
                    found[index] = entry[0]
            missing = [index for index, score in enumerate(found) if score is None]
        else:
            missing = list(range(len(keys)))
        cache.count(len(keys) - len(missing), len(missing))
        if missing and self.shared is not None and cache.enabled:
            missing = await self._read_shared(trust, cast(list[bytes], keys), found, missing)
        usage = Usage()
        if missing:
            if len(missing) == len(keys):
                missing_keys, missing_documents = keys, documents
            else:
                missing_keys = [keys[index] for index in missing]
                missing_documents = [documents[index] for index in missing]
            logits, tags, usage = await self.coalescer.score(
                target,
                query,
                missing_documents,
                missing_keys,
                deadline,
                siblings_expected=siblings_expected,
                images=not text_only,
            )
            # The one place scores enter the cache: only answers NIM gave, never errors.
            for tag, group in _by_tag(tags):
                group_keys = missing_keys if group is None else [missing_keys[i] for i in group]
                group_logits = logits if group is None else [logits[i] for i in group]
                cache.put_many(group_keys, group_logits, tag)
                if self.shared is not None and cache.enabled:
                    self.shared.store_scores(cast(list[bytes], group_keys), group_logits, tag)
            if len(missing) == len(keys):
                return Ranking(logits, target.model, usage, top_n)
            for index, logit in zip(missing, logits, strict=True):
                found[index] = logit
        # Every None was a miss, and every miss has its logit now.
        return Ranking(cast(list[float], found), target.model, usage, top_n)

    async def _read_shared(
        self, trust: _Trust, keys: list[bytes], found: list[float | None], missing: list[int]
    ) -> list[int]:
        """Fill ``found`` from the shared store, in one round trip that also asks whether
        another replica saw the request's endpoints accept its key; the indices still
        missing."""
        assert self.shared is not None
        stored, verified = await self.shared.lookup([keys[i] for i in missing], trust.unknown())
        for tag, key_id in verified:
            self.verified_keys.learned(tag, key_id)
            trust.learned(tag)
        readable = trust.readable
        hits = [
            (index, entry)
            for index, entry in zip(missing, stored, strict=True)
            if entry is not None and readable(entry[1])
        ]
        for index, (logit, tag) in hits:
            found[index] = logit
            self.cache.put_many([keys[index]], [logit], tag)
        return [index for index in missing if found[index] is None]


class _Trust:
    """Which endpoints' cached scores one request may read: every one under scopes ``shared``
    and ``key`` (the latter keeps each key's scores apart by the cache key itself), and under
    ``verified`` those of the request's endpoints that have accepted the key it would send
    them."""

    def __init__(self, ranker: Ranker, target: Target) -> None:
        self._verified_keys = ranker.verified_keys
        self._everyone = ranker.cache_scope != "verified"
        self._key_ids = {endpoint.tag: target.key_id_for(endpoint) for endpoint in target.endpoints}
        self._known: dict[bytes, bool] = {}

    def readable(self, tag: bytes) -> bool:
        if self._everyone:
            return True
        known = self._known.get(tag)
        if known is None:
            key_id = self._key_ids.get(tag)
            known = key_id is not None and self._verified_keys.holds(tag, key_id)
            self._known[tag] = known
        return known

    def unknown(self) -> list[Grant]:
        """The (endpoint, key) grants worth asking the shared store about."""
        if self._everyone:
            return []
        return [(tag, key_id) for tag, key_id in self._key_ids.items() if not self.readable(tag)]

    def learned(self, tag: bytes) -> None:
        self._known[tag] = True


def _by_tag(tags: list[bytes]) -> list[tuple[bytes, list[int] | None]]:
    """The positions answered by each endpoint; ``None`` when one endpoint answered all."""
    first = tags[0]
    if tags.count(first) == len(tags):
        return [(first, None)]
    groups: dict[bytes, list[int]] = {}
    for position, tag in enumerate(tags):
        groups.setdefault(tag, []).append(position)
    return list(groups.items())


def check_count(field: str, count: int, limit: int, variable: str) -> None:
    """Counts are checked before any per-item work, so no count costs more than its limit."""
    if count > limit:
        raise invalid_argument(
            f"{field}: {count} given, at most {limit} allowed per request ({variable})"
        )


def _utf8_size(field: str, text: str) -> int:
    """Bytes of ``text`` in UTF-8, encoded once. ASCII is the common case and costs O(1);
    JSON can carry lone surrogates (``"\\ud800"``) that no UTF-8 request can."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise invalid_argument(f"{field}: not valid Unicode (a lone surrogate)") from None


def check_top_n(top_n: int | None) -> None:
    if top_n is not None and top_n < 1:
        raise invalid_argument(f"top_n must be at least 1 when given, got {top_n}")
