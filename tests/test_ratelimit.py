"""The token buckets' arithmetic, over clock readings given to them."""

from __future__ import annotations

import pytest

from gateway.ratelimit import PlayerBuckets, TokenBucket, bucket_size, worker_share


def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    bucket = TokenBucket(rate=2.0, size=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # a token every 0.5 s
    assert bucket.take(100.25) == pytest.approx(0.25)  # half a token there already
    assert bucket.take(100.5) == 0.0
    # Quiet for long: full again, never more than its size.
    assert [bucket.take(200.0) for _ in range(4)][-1] > 0


def test_a_refused_request_takes_nothing() -> None:
    bucket = TokenBucket(rate=1.0, size=1, now=0.0)
    assert bucket.take(0.0) == 0.0
    for _ in range(5):
        assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0


def test_player_buckets_forget_the_least_recently_seen_first() -> None:
    players = PlayerBuckets(rate=1.0, size=1, capacity=2)
    assert players.take("a", 0.0) == 0.0
    assert players.take("b", 0.0) == 0.0
    assert players.take("a", 0.1) > 0  # a is empty, and now the most recently seen
    assert players.take("c", 0.1) == 0.0  # forgets b, not a
    assert len(players) == 2
    assert players.take("a", 0.2) > 0  # still remembered: still empty
    assert players.take("b", 0.2) == 0.0  # forgotten: a full bucket again


@pytest.mark.parametrize(
    ("capacity", "addresses"),
    [
        (1, 2),  # each new address forgets the one before
        (3, 3),  # exactly full: nothing forgotten yet
        (3, 4),
        (100, 10_000),  # a flood of distinct addresses, a hundred times the capacity
    ],
)
def test_player_buckets_never_hold_more_than_their_capacity(capacity: int, addresses: int) -> None:
    players = PlayerBuckets(rate=1.0, size=1, capacity=capacity)
    # Each address is new, or forgotten: every one finds a full bucket.
    assert all(players.take(f"198.18.{n >> 8}.{n & 255}", 0.0) == 0.0 for n in range(addresses))
    assert len(players) == min(capacity, addresses)
    # The most recently seen ones are those kept: each is empty now.
    kept = range(addresses - len(players), addresses)
    assert all(players.take(f"198.18.{n >> 8}.{n & 255}", 0.0) > 0 for n in kept)
    assert len(players) == min(capacity, addresses)


@pytest.mark.parametrize(
    ("rate", "burst", "share", "expected"),
    [
        (100.0, None, 1, (100.0, 100)),
        (100.0, 10, 4, (25.0, 3)),  # each worker: a quarter of the rate, the bucket rounded up
        (0.5, None, 2, (0.25, 1)),  # never an empty bucket
    ],
)
def test_each_worker_takes_its_share(
    rate: float, burst: int | None, share: int, expected: tuple[float, int]
) -> None:
    assert worker_share(rate, burst, share) == expected


def test_a_bucket_holds_its_burst_else_a_seconds_worth() -> None:
    assert (bucket_size(100.0, 10), bucket_size(100.0, None), bucket_size(0.5, None)) == (
        10,
        100,
        1,
    )
