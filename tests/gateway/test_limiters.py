"""Tests of the gateway's pure limits: token buckets, per-user rate limits, connection counts.

Everything is synchronous: time is a plain float passed as ``now``.
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from seatd.gateway.limits import ConnectionCounter, InflightGauge, RateLimiter, TokenBucket

# -- TokenBucket ------------------------------------------------------------------------------


def _takes(bucket: TokenBucket, calls: list[tuple[float, float]]) -> list[float]:
    return [bucket.take(now, cost) for now, cost in calls]


@pytest.mark.parametrize(
    ("rate", "burst", "calls", "expected"),
    [
        # Starts full: the whole burst at once, then a refusal with the time to the next token.
        (1.0, 3.0, [(0, 1), (0, 1), (0, 1), (0, 1)], [0, 0, 0, 1.0]),
        # Refills at `rate`: 2 tokens per second.
        (2.0, 2.0, [(0, 2), (0.5, 1), (0.5, 1)], [0, 0, 0.5]),
        # Refill stops at `burst`: a long idle time does not bank more than burst.
        (1.0, 2.0, [(0, 2), (100, 1), (100, 1), (100, 1)], [0, 0, 0, 1.0]),
        # A cost above one is all or nothing, and the wait is for the whole cost.
        (1.0, 4.0, [(0, 3), (0, 2), (0, 1)], [0, 1.0, 0]),
        # A cost that can never fit waits forever, whatever the bucket holds.
        (1.0, 2.0, [(0, 3)], [math.inf]),
        # rate <= 0: unlimited, whatever burst says.
        (0.0, 0.0, [(0, 1)] * 5 + [(0, 1e9)], [0] * 6),
        (-1.0, 1.0, [(0, 1)] * 5, [0] * 5),
        # Fractional rates and costs.
        (0.5, 1.0, [(10, 1), (11, 1), (12, 1)], [0, 1.0, 0]),
        (4.0, 1.0, [(0, 0.25)] * 4 + [(0, 0.25)], [0, 0, 0, 0, 0.0625]),
    ],
    ids=[
        "starts-full",
        "refills-at-rate",
        "capped-at-burst",
        "cost-all-or-nothing",
        "cost-above-burst",
        "rate-zero-unlimited",
        "rate-negative-unlimited",
        "slow-rate",
        "fractional-cost",
    ],
)
def test_token_bucket_schedule(
    rate: float, burst: float, calls: list[tuple[float, float]], expected: list[float]
) -> None:
    assert _takes(TokenBucket(rate, burst), calls) == pytest.approx(expected)


def test_token_bucket_refusal_consumes_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0)
    assert bucket.take(0.0) == 0.0
    # Refused twice at the same moment: the same wait both times, and nothing taken.
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(0.5, cost=0.5) == 0.0
    assert bucket.take(1.0, cost=0.5) == 0.0


def test_token_bucket_clock_stepping_back_counts_as_no_time() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert bucket.take(10.0) == 0.0
    # Earlier than the last call: neither burns the token left nor mints one.
    assert bucket.take(9.0) == 0.0
    assert bucket.take(9.0) == pytest.approx(1.0)
    # Back at the latest time: only what 10 -> 10.5 refilled.
    assert bucket.available(10.5) == pytest.approx(0.5)


def test_token_bucket_available_changes_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0)
    assert bucket.available(0.0) == 3.0
    assert bucket.take(0.0, cost=2.0) == 0.0
    assert bucket.available(0.5) == pytest.approx(1.5)
    assert bucket.available(0.5) == pytest.approx(1.5)
    assert bucket.available(100.0) == 3.0
    assert TokenBucket(0.0, 0.0).available(0.0) == math.inf


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(1.0, 0.0), (1.0, -1.0), (1.0, math.nan), (1.0, math.inf), (math.nan, 1.0), (math.inf, 1.0)],
)
def test_token_bucket_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_token_bucket_allocates_no_dict() -> None:
    # __slots__: no per-instance dict, and no attribute can appear by typo.
    bucket = TokenBucket(1.0, 1.0)
    assert not hasattr(bucket, "__dict__")


_rates = st.floats(min_value=0.01, max_value=1000.0)
_bursts = st.floats(min_value=0.5, max_value=100.0)
_steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=5.0),  # time since the previous call
        st.sampled_from([0.5, 1.0, 1.0, 1.0, 2.0, 3.0]),  # cost
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(rate=_rates, burst=_bursts, start=st.floats(0.0, 1e7), steps=_steps)
def test_token_bucket_never_allows_more_than_burst_plus_refill(
    rate: float, burst: float, start: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = start
    allowed: list[tuple[float, float]] = []
    for dt, cost in steps:
        now += dt
        if bucket.take(now, cost) == 0.0:
            allowed.append((now, cost))
    # Over every window between two allowed calls, what was allowed fits the bucket's promise
    # (with the documented microsecond of tolerance and float rounding).
    for i, (first, _) in enumerate(allowed):
        spent = 0.0
        for last, cost in allowed[i:]:
            spent += cost
            bound = burst + rate * (last - first + 1e-6)
            assert spent <= bound + 1e-9 * bound, (first, last, spent, bound)


@settings(max_examples=300, deadline=None)
@given(rate=_rates, burst=_bursts, start=st.floats(0.0, 1e7), steps=_steps)
def test_token_bucket_waiting_the_answer_suffices(
    rate: float, burst: float, start: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = start
    for dt, cost in steps:
        now += dt
        wait = bucket.take(now, cost)
        if wait == 0.0:
            continue
        if cost > burst:
            assert wait == math.inf
            continue
        assert wait > 0.0
        # Not before (beyond the tolerance) ...
        if wait > 1e-5:
            assert bucket.take(now + wait - 1e-5 - wait / 1000, cost) > 0.0
        # ... and surely then.
        now += wait
        assert bucket.take(now, cost) == 0.0


# -- RateLimiter ------------------------------------------------------------------------------


def test_rate_limiter_connection_bucket_limits_one_connection() -> None:
    limiter = RateLimiter(per_connection=(1.0, 2.0), per_user=(100.0, 100.0))
    a, b = limiter.connection_bucket(), limiter.connection_bucket()
    assert [limiter.check("alice", a, 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    # A fresh connection of the same user has its own full bucket.
    assert limiter.check("alice", b, 0.0) == 0.0


def test_rate_limiter_user_bucket_is_shared_by_connections() -> None:
    limiter = RateLimiter(per_connection=(100.0, 100.0), per_user=(1.0, 3.0))
    a, b, c = (limiter.connection_bucket() for _ in range(3))
    assert [limiter.check("alice", x, 0.0) for x in (a, b, a)] == [0.0, 0.0, 0.0]
    assert limiter.check("alice", c, 0.0) == pytest.approx(1.0)
    # Another user is not affected.
    assert limiter.check("bob", limiter.connection_bucket(), 0.0) == 0.0


def test_rate_limiter_user_refusal_does_not_consume_connection_token() -> None:
    limiter = RateLimiter(per_connection=(1.0, 2.0), per_user=(1.0, 1.0))
    a = limiter.connection_bucket()
    assert limiter.check("alice", a, 0.0) == 0.0
    assert limiter.check("alice", a, 0.0) == pytest.approx(1.0)  # the user refuses
    assert a.available(0.0) == pytest.approx(1.0)  # the connection's token is still there


def test_rate_limiter_connection_refusal_does_not_consume_user_token() -> None:
    limiter = RateLimiter(per_connection=(1.0, 1.0), per_user=(1.0, 3.0))
    a, b = limiter.connection_bucket(), limiter.connection_bucket()
    assert limiter.check("alice", a, 0.0) == 0.0
    assert limiter.check("alice", a, 0.0) == pytest.approx(1.0)  # the connection refuses
    assert limiter.check("alice", a, 0.0) == pytest.approx(1.0)
    # Two of the user's three tokens remain for another connection.
    assert limiter.check("alice", b, 0.0) == 0.0
    assert limiter.check("alice", limiter.connection_bucket(), 0.0) == 0.0
    assert limiter.check("alice", limiter.connection_bucket(), 0.0) > 0.0


def test_rate_limiter_both_refusing_waits_for_the_later() -> None:
    limiter = RateLimiter(per_connection=(1.0, 1.0), per_user=(0.25, 1.0))
    a = limiter.connection_bucket()
    assert limiter.check("alice", a, 0.0) == 0.0
    assert limiter.check("alice", a, 0.0) == pytest.approx(4.0)


def test_rate_limiter_without_user_limit_keeps_no_user_state() -> None:
    limiter = RateLimiter(per_connection=(1.0, 1.0), per_user=(0.0, 0.0))
    a = limiter.connection_bucket()
    assert [limiter.check(f"u{i}", a, 0.0) for i in range(2)] == [0.0, pytest.approx(1.0)]
    assert limiter.users == 0


def test_rate_limiter_forgets_a_full_bucket_on_release() -> None:
    limiter = RateLimiter(per_connection=(10.0, 10.0), per_user=(1.0, 2.0))
    limiter.check("alice", limiter.connection_bucket(), 0.0)
    limiter.release("alice", 0.0)
    assert limiter.users == 1  # not full yet
    limiter.release("alice", 1.0)
    assert limiter.users == 0


def test_rate_limiter_reconnecting_does_not_reset_the_user_budget() -> None:
    limiter = RateLimiter(per_connection=(10.0, 10.0), per_user=(1.0, 2.0))
    a = limiter.connection_bucket()
    assert [limiter.check("alice", a, 0.0) for _ in range(2)] == [0.0, 0.0]
    limiter.release("alice", 0.0)
    limiter.release("unknown", 0.0)  # harmless
    assert limiter.check("alice", limiter.connection_bucket(), 0.1) == pytest.approx(0.9)


def test_rate_limiter_idle_buckets_are_dropped_once_surely_full() -> None:
    limiter = RateLimiter(per_connection=(10.0, 10.0), per_user=(1.0, 2.0))
    for user in ("alice", "bob"):
        limiter.check(user, limiter.connection_bucket(), 0.0)
        limiter.release(user, 0.0)
    assert limiter.users == 2
    # A new user arriving after the refill time (2 s) sweeps the idle ones away.
    limiter.check("carol", limiter.connection_bucket(), 1.999)
    assert limiter.users == 3
    limiter.check("dave", limiter.connection_bucket(), 2.001)
    assert limiter.users == 2  # carol and dave


def test_rate_limiter_a_returning_user_is_not_dropped_while_refilling() -> None:
    limiter = RateLimiter(per_connection=(10.0, 10.0), per_user=(1.0, 2.0))
    assert limiter.check("alice", limiter.connection_bucket(), 0.0) == 0.0
    assert limiter.check("alice", limiter.connection_bucket(), 0.0) == 0.0
    limiter.release("alice", 0.0)
    # Alice is back and spends again before her idle entry would have expired.
    a = limiter.connection_bucket()
    assert limiter.check("alice", a, 1.9) == 0.0
    limiter.check("bob", limiter.connection_bucket(), 2.001)  # sweeps expired idle entries
    # Her bucket holds 1.001 tokens, not a fresh 2.
    assert [limiter.check("alice", a, 2.001) for _ in range(2)] == [0.0, pytest.approx(0.999)]


def test_rate_limiter_caps_the_users_it_remembers_preferring_idle_ones() -> None:
    limiter = RateLimiter(per_connection=(10.0, 10.0), per_user=(1.0, 5.0), max_users=2)
    alice, bob = limiter.connection_bucket(), limiter.connection_bucket()
    for _ in range(5):
        limiter.check("alice", alice, 0.0)
        limiter.check("bob", bob, 0.0)
    limiter.release("bob", 0.0)
    limiter.check("carol", limiter.connection_bucket(), 0.0)
    assert limiter.users == 2
    # Bob (idle) was dropped, so he starts afresh; Alice (active) kept her empty bucket.
    assert limiter.check("alice", alice, 0.0) > 0.0
    limiter.check("dave", limiter.connection_bucket(), 0.0)  # no idle one: the oldest goes
    assert limiter.users == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_connection": (1.0, 0.0), "per_user": (1.0, 1.0)},
        {"per_connection": (1.0, 1.0), "per_user": (1.0, -1.0)},
        {"per_connection": (1.0, 1.0), "per_user": (1.0, 1.0), "max_users": 0},
    ],
)
def test_rate_limiter_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


_limiter_steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=1.5),  # time since the previous step
        st.sampled_from(["frame", "frame", "frame", "new", "close"]),
        st.integers(min_value=0, max_value=7),  # which connection
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(steps=_limiter_steps)
def test_rate_limiter_user_never_exceeds_its_bucket(
    steps: list[tuple[float, str, int]],
) -> None:
    # However the user opens, uses and closes connections (and however the limiter forgets and
    # recreates its bucket), the frames let through never beat burst + rate * elapsed.
    rate, burst = 2.0, 3.0
    limiter = RateLimiter(per_connection=(100.0, 100.0), per_user=(rate, burst))
    connections = [limiter.connection_bucket()]
    now = 0.0
    allowed: list[float] = []
    for dt, action, index in steps:
        now += dt
        if action == "new":
            connections.append(limiter.connection_bucket())
        elif action == "close":
            limiter.release("alice", now)
        elif limiter.check("alice", connections[index % len(connections)], now) == 0.0:
            allowed.append(now)
    for i, first in enumerate(allowed):
        for j in range(i, len(allowed)):
            assert j - i + 1 <= burst + rate * (allowed[j] - first + 1e-6) + 1e-9


# -- ConnectionCounter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "addresses", "expected"),
    [
        # Per address: the third from "a" is refused, another address is not.
        ((2, 0, 0), ["a", "a", "a", "b"], [None, None, "address", None]),
        # Total across addresses.
        ((0, 0, 3), ["a", "b", "c", "d"], [None, None, None, "total"]),
        # The total is checked first: a full instance says "total" even for a full address.
        ((1, 0, 2), ["a", "b", "a"], [None, None, "total"]),
        # 0 everywhere: no limit at all.
        ((0, 0, 0), ["a"] * 50, [None] * 50),
    ],
    ids=["per-address", "total", "total-first", "unlimited"],
)
def test_connection_counter_admit_address(
    limits: tuple[int, int, int], addresses: list[str], expected: list[str | None]
) -> None:
    counter = ConnectionCounter(*limits)
    assert [counter.admit_address(a) for a in addresses] == expected
    assert counter.total == sum(e is None for e in expected)


def test_connection_counter_admit_user() -> None:
    counter = ConnectionCounter(per_address=0, per_user=2, total=0)
    assert [counter.admit_user("alice") for _ in range(3)] == [True, True, False]
    assert counter.admit_user("bob")
    counter.leave("x", "alice")
    assert counter.admit_user("alice")
    assert ConnectionCounter(0, 0, 0).admit_user("alice")


def test_connection_counter_leave_frees_the_slots() -> None:
    counter = ConnectionCounter(per_address=1, per_user=1, total=1)
    assert counter.admit_address("a") is None
    assert counter.admit_user("alice")
    assert counter.admit_address("b") == "total"
    counter.leave("a", "alice")
    assert counter.admit_address("b") is None
    assert counter.admit_user("alice")


def test_connection_counter_never_goes_negative() -> None:
    counter = ConnectionCounter(per_address=1, per_user=1, total=2)
    counter.leave("a", "alice")
    counter.leave("a", "alice")
    assert (counter.total, counter.addresses, counter.users) == (0, 0, 0)
    # A spurious leave did not buy an extra slot.
    assert [counter.admit_address("a") for _ in range(2)] == [None, "address"]
    assert [counter.admit_user("alice") for _ in range(2)] == [True, False]
    # Nor does a double leave free the slot another address holds against the total.
    assert counter.admit_address("b") is None
    counter.leave("a", "alice")
    counter.leave("a", "alice")
    assert counter.total == 1
    assert counter.admit_address("c") is None
    assert counter.admit_address("d") == "total"


def test_connection_counter_deletes_keys_at_zero() -> None:
    counter = ConnectionCounter(per_address=0, per_user=0, total=0)
    for i in range(100):
        assert counter.admit_address(f"10.0.0.{i}") is None
        assert counter.admit_user(f"user-{i}")
    assert (counter.total, counter.addresses, counter.users) == (100, 100, 100)
    for i in range(100):
        counter.leave(f"10.0.0.{i}", f"user-{i}")
    assert (counter.total, counter.addresses, counter.users) == (0, 0, 0)


@pytest.mark.parametrize("limits", [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
def test_connection_counter_rejects_negative_limits(limits: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        ConnectionCounter(*limits)


_counter_ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.sampled_from("abc"), st.sampled_from(["u1", "u2", "u3"])),
        st.tuples(st.just("close"), st.integers(0, 20), st.just("")),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    limits=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 6)),
    ops=_counter_ops,
)
def test_connection_counter_matches_a_model_and_empties(
    limits: tuple[int, int, int], ops: list[tuple[str, object, str]]
) -> None:
    per_address, per_user, total = limits
    counter = ConnectionCounter(per_address, per_user, total)
    open_: list[tuple[str, str]] = []
    for op, arg, user in ops:
        if op == "open":
            address = str(arg)
            from_address = sum(a == address for a, _ in open_)
            expected: str | None = None
            if total and len(open_) >= total:
                expected = "total"
            elif per_address and from_address >= per_address:
                expected = "address"
            assert counter.admit_address(address) == expected
            if expected is not None:
                continue
            user_ok = not per_user or sum(u == user for _, u in open_) < per_user
            assert counter.admit_user(user) == user_ok
            if user_ok:
                open_.append((address, user))
            else:
                counter.leave(address, None)
        elif open_:
            address, user = open_.pop(int(str(arg)) % len(open_))
            counter.leave(address, user)
        assert counter.total == len(open_)
        assert counter.addresses == len({a for a, _ in open_})
        assert counter.users == len({u for _, u in open_})
    for address, user in open_:
        counter.leave(address, user)
    assert (counter.total, counter.addresses, counter.users) == (0, 0, 0)


# -- InflightGauge ----------------------------------------------------------------------------


def test_inflight_gauge_sheds_at_the_limit() -> None:
    gauge = InflightGauge(limit=2)
    assert [gauge.enter() for _ in range(3)] == [True, True, False]
    assert gauge.count == 2
    gauge.leave()
    assert gauge.enter()
    assert not gauge.enter()


def test_inflight_gauge_never_goes_negative() -> None:
    gauge = InflightGauge(limit=1)
    gauge.leave()
    gauge.leave()
    assert gauge.count == 0
    assert [gauge.enter() for _ in range(2)] == [True, False]


def test_inflight_gauge_zero_means_no_limit() -> None:
    gauge = InflightGauge(limit=0)
    assert all(gauge.enter() for _ in range(10_000))
    assert gauge.count == 10_000
    with pytest.raises(ValueError):
        InflightGauge(limit=-1)
