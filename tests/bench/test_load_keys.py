"""The load generator's retry keys (``seatd.bench.layout``): unique across processes."""

from __future__ import annotations

import os

from seatd.bench.layout import _next_key


def _prefix(key: bytes) -> bytes:
    return key.rpartition(b"-")[0]


def test_keys_count_up_behind_one_prefix_and_a_forked_process_draws_its_own() -> None:
    first, second = _next_key(), _next_key()
    assert _prefix(first) == _prefix(second) and first != second
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next key and leave at once
        os.write(write, _next_key())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100)
    os.close(read)
    os.waitpid(pid, 0)
    assert child and _prefix(child) != _prefix(first)
    assert _prefix(_next_key()) == _prefix(first)  # the parent keeps its own
