"""A dict split by key hash into shards, so that it never grows all at once."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from itertools import chain
from typing import Generic, TypeVar

__all__ = ["ShardedDict", "shards_for"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Entries per shard that a sized ShardedDict aims at: a shard this full regrows in well
# under a millisecond.
_PER_SHARD = 8192


def shards_for(entries: int) -> int:
    """How many shards keep ``entries`` entries at most ``_PER_SHARD`` each (a power of 2)."""
    return 1 << (entries // _PER_SHARD).bit_length()


class ShardedDict(Generic[K, V]):
    """The part of a dict's interface a per-hold table needs, over ``shards`` dicts.

    CPython grows a dict by rehashing every entry at once when it is two thirds full. For a
    table keyed by live holds that happens mid-sale: at 87,382 entries it held the whole
    server (every event, every connection) for 5-28 ms per dict (BENCHMARKS.md, round 16).
    Split by hash, each shard grows on its own, a fraction of that at a time. The price is
    one more index per access; iteration and ``len`` go over every shard.
    """

    __slots__ = ("_mask", "_shards")

    def __init__(self, shards: int = 1) -> None:
        if shards < 1 or shards & (shards - 1):
            raise ValueError(f"shards is a power of 2, not {shards}")
        self._shards: list[dict[K, V]] = [{} for _ in range(shards)]
        self._mask = shards - 1

    @property
    def shards(self) -> list[dict[K, V]]:
        """The shards themselves, to read (each with ``_Journal.before``, say)."""
        return self._shards

    def shard(self, key: K) -> dict[K, V]:
        """The dict that holds ``key`` (or would): to write through ``_Journal``, say."""
        return self._shards[hash(key) & self._mask]

    def get(self, key: K) -> V | None:
        return self._shards[hash(key) & self._mask].get(key)

    def __contains__(self, key: K) -> bool:
        return key in self._shards[hash(key) & self._mask]

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & self._mask][key]

    def __setitem__(self, key: K, value: V) -> None:
        self._shards[hash(key) & self._mask][key] = value

    def __delitem__(self, key: K) -> None:
        del self._shards[hash(key) & self._mask][key]

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._shards[hash(key) & self._mask].pop(key, default)

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def items(self) -> Iterator[tuple[K, V]]:
        return chain.from_iterable(shard.items() for shard in self._shards)
