"""ShardedDict behaves as the dict it stands for, and grows one shard at a time."""

from __future__ import annotations

import random
import sys

import pytest

from seatd.core.shards import ShardedDict, shards_for


@pytest.mark.parametrize("shards", [1, 2, 16])
def test_it_answers_as_a_dict_would(shards: int) -> None:
    rng = random.Random(shards)
    table: ShardedDict[str, int] = ShardedDict(shards)
    reference: dict[str, int] = {}
    for step in range(5000):
        key = f"k{rng.randrange(400)}"
        action = rng.randrange(4)
        if action == 0:
            table[key] = reference[key] = step
        elif action == 1:
            assert table.pop(key) == reference.pop(key, None)
        elif action == 2 and key in reference:
            del table[key]
            del reference[key]
        else:
            assert table.get(key) == reference.get(key)
            assert (key in table) == (key in reference)
            if key in reference:
                assert table[key] == reference[key]
        assert len(table) == len(reference)
    assert sorted(table.items()) == sorted(reference.items())
    assert sum(map(len, table.shards)) == len(reference)
    assert all(key in table.shard(key) for key in reference)


def test_a_missing_key_raises_as_a_dict_does() -> None:
    table: ShardedDict[str, int] = ShardedDict(4)
    with pytest.raises(KeyError):
        table["nothing"]
    with pytest.raises(KeyError):
        del table["nothing"]


def test_entries_spread_over_the_shards_so_none_grows_alone() -> None:
    """What the sharding is for: 87,382 entries, where one dict regrows all of them at once
    (BENCHMARKS.md round 16), are kept in shards about a sixteenth of that size."""
    count = 87_382
    table: ShardedDict[str, None] = ShardedDict(shards_for(count))
    for i in range(count):
        table[f"hold-{i}"] = None
    sizes = [len(shard) for shard in table.shards]
    assert len(sizes) == 16
    assert max(sizes) < count // 16 * 1.2
    one_dict = dict.fromkeys(f"hold-{i}" for i in range(count))
    assert max(map(sys.getsizeof, table.shards)) < sys.getsizeof(one_dict) / 8


def test_shard_counts_are_powers_of_two_sized_to_the_entries() -> None:
    assert [shards_for(n) for n in (0, 4, 8191, 8192, 20_000, 100_000)] == [1, 1, 1, 2, 4, 16]
    with pytest.raises(ValueError, match="power of 2"):
        ShardedDict(3)
