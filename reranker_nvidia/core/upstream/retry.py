"""When to send an upstream call again, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass

from reranker_nvidia.errors import RerankError


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, never shorter than the upstream's Retry-After.

    Only failures marked retryable (429, 5xx, connection errors, timeouts) are retried;
    ranking is a pure function of its input, so sending it twice is harmless.
    """

    max_retries: int = 2
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0

    def should_retry(self, error: RerankError, attempt: int) -> bool:
        """``attempt`` counts from 0 for the first call."""
        return error.retryable and attempt < self.max_retries

    def delay_s(self, error: RerankError, attempt: int) -> float:
        backoff = random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))
        return max(backoff, error.retry_after_s or 0.0)
