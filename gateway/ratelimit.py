"""Token buckets: a tenant's rate, and each client IP's within a tenant.

A bucket holds up to ``size`` tokens and gains ``rate`` a second; a request takes one or
is refused with the seconds until one is there. Pure arithmetic over a clock reading the
caller passes in; the per-IP buckets are bounded (least recently used forgotten first),
so a flood of distinct addresses costs a bounded amount of memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict

# Client IPs remembered per tenant (and worker); about 200 bytes each.
PLAYER_BUCKETS = 10_000


def bucket_size(rate_per_s: float, burst: int | None) -> int:
    """``burst``, else one second's worth of ``rate_per_s`` (at least 1)."""
    return burst if burst is not None else max(1, math.ceil(rate_per_s))


def worker_share(rate: float, burst: int | None, share: int) -> tuple[float, int]:
    """One process's part of a rate and its bucket: 1/share of each (the bucket at least 1)."""
    return rate / share, max(1, math.ceil(bucket_size(rate, burst) / share))


class TokenBucket:
    """``size`` tokens at most, ``rate`` more a second."""

    __slots__ = ("rate", "size", "stamp", "tokens")

    def __init__(self, rate: float, size: int, now: float) -> None:
        self.rate = rate
        self.size = size
        self.tokens = float(size)
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else the seconds until there is one."""
        tokens = min(self.size, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


class PlayerBuckets:
    """A bucket per client IP, ``capacity`` of them at most."""

    __slots__ = ("_buckets", "capacity", "rate", "size")

    def __init__(self, rate: float, size: int, capacity: int = PLAYER_BUCKETS) -> None:
        self.rate = rate
        self.size = size
        self.capacity = capacity
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str, now: float) -> float:
        """As TokenBucket.take, for ``address``'s bucket.

        A forgotten address starts again with a full bucket: the same as one that has
        been quiet long enough to refill, which is what the least recently used one is.
        """
        buckets = self._buckets
        bucket = buckets.get(address)
        if bucket is None:
            if len(buckets) >= self.capacity:
                buckets.popitem(last=False)
            bucket = buckets[address] = TokenBucket(self.rate, self.size, now)
        else:
            buckets.move_to_end(address)
        return bucket.take(now)
