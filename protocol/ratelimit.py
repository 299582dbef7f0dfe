"""A token bucket: a rate with a burst allowance, driven by the caller's clock."""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate_per_s`` events per second on average and ``burst`` at once.

    Pure: :meth:`take` is given the time, so tests drive it without sleeping.
    """

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, *, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False if the caller is over its rate."""
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after_s(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self._tokens) / self._rate)
