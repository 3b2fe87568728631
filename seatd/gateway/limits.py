"""Admission and rate limits for the gateway: pure counters, no asyncio, no I/O.

Why they exist: one client must not be able to starve the others, whether by opening many
sockets (``ConnectionCounter``), by sending frames faster than its share (``TokenBucket`` per
connection, ``RateLimiter`` per user across that user's connections), or, when everyone is busy,
by piling more work onto actors that are already behind (``InflightGauge`` sheds instead).

Time is always passed in as ``now`` (monotonic seconds), so every rule is testable with plain
floats and the per-frame path stays a few attribute reads and one comparison. Every structure
keyed by address or user deletes a key once it holds nothing worth remembering, so memory is
bounded by the connections open, never by the clients ever seen.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["ConnectionCounter", "InflightGauge", "RateLimiter", "Refusal", "TokenBucket"]

# A take that would succeed within this many seconds is let through now, so that waiting the
# returned time always suffices even after float rounding of ``now + wait``. It lends at most
# ``rate * 1e-6`` tokens, and never more than that in total (the debt is carried, not forgiven).
_TOLERANCE = 1e-6

# Users' buckets kept at most (a safety net; connections already bound it).
DEFAULT_MAX_USERS = 100_000

Refusal = Literal["total", "address"]
"""Why ``ConnectionCounter.admit_address`` refused: the instance or the address is full."""


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second; one frame costs one token.

    Starts full, so a client may send ``burst`` frames at once and then ``rate`` per second:
    over any interval of length ``d`` it gets at most ``burst + rate * d`` tokens. A refusal
    consumes nothing, so a client that waits the returned time is served. ``rate <= 0`` means
    unlimited. The state is two floats; ``take`` allocates nothing.
    """

    __slots__ = ("_burst", "_rate", "_slack", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        if math.isnan(rate) or math.isinf(rate):
            raise ValueError(f"rate must be a finite number of tokens per second, not {rate!r}")
        if rate > 0 and not (burst > 0 and math.isfinite(burst)):
            raise ValueError(f"burst must be a finite number above 0, not {burst!r}")
        self._rate = float(rate)
        self._burst = float(burst)
        self._slack = self._rate * _TOLERANCE
        self._tokens = self._burst
        # -inf: the first take refills to ``burst`` whatever ``now`` is (starts full).
        self._stamp = -math.inf

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def take(self, now: float, cost: float = 1.0) -> float:
        """0.0 if ``cost`` tokens were taken; else the seconds until they will be, taking none.

        ``math.inf`` when ``cost`` exceeds ``burst`` (it never fits). A ``now`` earlier than a
        previous one counts as no time passing: a clock step back neither mints nor burns tokens.
        """
        rate = self._rate
        if rate <= 0.0:
            return 0.0
        tokens = self._tokens
        elapsed = now - self._stamp
        if elapsed > 0.0:
            tokens += elapsed * rate
            if tokens > self._burst:
                tokens = self._burst
            self._stamp = now
        deficit = cost - tokens
        if deficit <= self._slack:
            self._tokens = tokens - cost
            return 0.0
        self._tokens = tokens
        if cost > self._burst:
            return math.inf
        return deficit / rate

    def available(self, now: float) -> float:
        """Tokens that a take at ``now`` could use (``inf`` when unlimited); changes nothing."""
        if self._rate <= 0.0:
            return math.inf
        return max(0.0, self._tokens_at(now))

    def _tokens_at(self, now: float) -> float:
        # May be a hair below zero: the debt a tolerated early take left behind.
        elapsed = now - self._stamp
        if elapsed <= 0.0:
            return self._tokens
        return min(self._burst, self._tokens + elapsed * self._rate)

    def _wait(self, now: float, cost: float = 1.0) -> float:
        # What ``take`` would return, without taking.
        if self._rate <= 0.0:
            return 0.0
        deficit = cost - self._tokens_at(now)
        if deficit <= self._slack:
            return 0.0
        return math.inf if cost > self._burst else deficit / self._rate

    def _is_full(self, now: float) -> bool:
        # A full bucket is indistinguishable from a fresh one: forgetting it loses nothing.
        return self._rate <= 0.0 or self._tokens_at(now) >= self._burst

    def _refund(self, cost: float) -> None:
        # Undo a take made at the current stamp (used when the other bucket refused).
        self._tokens = min(self._burst, self._tokens + cost)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate!r}, burst={self._burst!r}, tokens={self._tokens!r})"


class RateLimiter:
    """Frame rate limits per connection and per user (all of a user's connections here).

    The per-user bucket stops a client from multiplying its share by opening more sockets.
    A frame passes only if both buckets have a token; a refusal by either takes from neither.

    Memory: a user's bucket is created on its first frame and forgotten once it is full again
    (a full bucket equals a fresh one, so nothing is lost). ``release`` is called when one of
    the user's connections closes; a bucket that is not yet full stays until it must have
    refilled, so reconnecting never resets a user's budget. ``max_users`` caps the table: past
    it the longest-released bucket (else the oldest) is dropped, which can only be lenient.
    """

    __slots__ = ("_connection", "_idle", "_max_users", "_refill", "_user", "_user_rate", "_users")

    def __init__(
        self,
        per_connection: tuple[float, float],
        per_user: tuple[float, float],
        *,
        max_users: int = DEFAULT_MAX_USERS,
    ) -> None:
        if max_users < 1:
            raise ValueError(f"max_users must be at least 1, not {max_users!r}")
        TokenBucket(*per_connection)  # validate once, here, rather than on the first connection
        self._connection = per_connection
        self._user = TokenBucket(*per_user)  # template; validates too
        rate, burst = self._user.rate, self._user.burst
        self._user_rate = rate  # a plain slot: read on every frame, a property costs more
        # Seconds after which a bucket untouched since then is surely full again (the tolerance
        # covers the tiny debt an early take may have left).
        self._refill = burst / rate + _TOLERANCE if rate > 0 else 0.0
        self._max_users = max_users
        self._users: dict[str, TokenBucket] = {}
        # Users whose connection closed and who have not sent a frame since, in release order,
        # with the release time: an ordered dict is a queue with O(1) removal from the middle.
        self._idle: dict[str, float] = {}

    @property
    def users(self) -> int:
        """How many users' buckets are held (for metrics and tests)."""
        return len(self._users)

    def connection_bucket(self) -> TokenBucket:
        """A new, full bucket for one new connection (it lives and dies with the connection)."""
        return TokenBucket(*self._connection)

    def check(self, user_id: str, bucket: TokenBucket, now: float) -> float:
        """0.0 if the frame may pass (one token taken from each bucket), else seconds to wait.

        When both refuse, the wait is the longer one: the time after which both allow.
        """
        if self._user_rate <= 0.0:
            return bucket.take(now)
        user = self._users.get(user_id)
        if user is None:
            user = self._add(user_id, now)
        elif self._idle:
            self._idle.pop(user_id, None)  # in use again: not a candidate for forgetting
        wait = bucket.take(now)
        if wait:
            return max(wait, user._wait(now))
        wait = user.take(now)
        if wait:
            bucket._refund(1.0)
        return wait

    def release(self, user_id: str, now: float) -> None:
        """One of the user's connections closed: forget its bucket once full. Safe to repeat."""
        user = self._users.get(user_id)
        if user is None:
            return
        if user._is_full(now):
            del self._users[user_id]
            self._idle.pop(user_id, None)
        elif user_id not in self._idle:
            self._idle[user_id] = now
        self._prune(now)

    def _add(self, user_id: str, now: float) -> TokenBucket:
        self._prune(now)
        if len(self._users) >= self._max_users:
            if self._idle:
                victim = next(iter(self._idle))
                del self._idle[victim]
            else:
                victim = next(iter(self._users))
            del self._users[victim]
        user = self._users[user_id] = TokenBucket(self._user.rate, self._user.burst)
        return user

    def _prune(self, now: float) -> None:
        # Idle buckets released at least one refill time ago are full: drop them, oldest first.
        idle = self._idle
        while idle:
            user_id, released = next(iter(idle.items()))
            if now - released < self._refill:
                break
            del idle[user_id]
            self._users.pop(user_id, None)


class ConnectionCounter:
    """Open connections per address, per user and in total, each with a cap (0 = no cap).

    The address is checked before the handshake (cheap refusal of a flood from one place), the
    user after authentication. Counts never go negative and a key at zero is deleted, so the
    tables hold only what is open.
    """

    __slots__ = ("_addresses", "_per_address", "_per_user", "_total", "_total_limit", "_users")

    def __init__(self, per_address: int, per_user: int, total: int) -> None:
        for name, value in (("per_address", per_address), ("per_user", per_user), ("total", total)):
            if value < 0:
                raise ValueError(f"{name} must be 0 (no limit) or more, not {value!r}")
        self._per_address = per_address
        self._per_user = per_user
        self._total_limit = total
        self._total = 0
        self._addresses: dict[str, int] = {}
        self._users: dict[str, int] = {}

    @property
    def total(self) -> int:
        """Connections admitted and not yet left."""
        return self._total

    @property
    def addresses(self) -> int:
        """Addresses with at least one connection counted."""
        return len(self._addresses)

    @property
    def users(self) -> int:
        """Users with at least one connection counted."""
        return len(self._users)

    def admit_address(self, address: str) -> Refusal | None:
        """None if admitted (and counted); else why not: ``"total"`` or ``"address"``."""
        if self._total_limit and self._total >= self._total_limit:
            return "total"
        count = self._addresses.get(address, 0)
        if self._per_address and count >= self._per_address:
            return "address"
        self._addresses[address] = count + 1
        self._total += 1
        return None

    def admit_user(self, user_id: str) -> bool:
        """True if the user may have one more connection (and it is counted).

        On False the connection is refused: call ``leave(address, None)`` for its address.
        """
        count = self._users.get(user_id, 0)
        if self._per_user and count >= self._per_user:
            return False
        self._users[user_id] = count + 1
        return True

    def leave(self, address: str, user_id: str | None = None) -> None:
        """A counted connection closed; ``user_id`` only if ``admit_user`` admitted it.

        Leaving what was never counted changes nothing, so a double call cannot free a slot
        that another connection holds.
        """
        if _decrement(self._addresses, address):
            self._total -= 1
        if user_id is not None:
            _decrement(self._users, user_id)


def _decrement(counts: dict[str, int], key: str) -> bool:
    count = counts.get(key)
    if count is None:
        return False
    if count <= 1:
        del counts[key]
    else:
        counts[key] = count - 1
    return True


class InflightGauge:
    """Requests in progress across all connections; at ``limit`` new ones are shed (0 = no limit).

    Shedding at the door (a temporary error the client retries with backoff) keeps latency
    bounded for the requests already admitted, instead of queueing without end behind actors
    that are already behind.
    """

    __slots__ = ("_count", "_limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be 0 (no limit) or more, not {limit!r}")
        self._limit = limit
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def limit(self) -> int:
        return self._limit

    def enter(self) -> bool:
        """True if the request may start (and is counted); False: shed it."""
        if self._limit and self._count >= self._limit:
            return False
        self._count += 1
        return True

    def leave(self) -> None:
        """A request that ``enter`` admitted has finished. Never goes below zero."""
        if self._count > 0:
            self._count -= 1
