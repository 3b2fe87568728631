"""Deadlines: the same order as a heap of (time, id) pairs, without a tuple per entry."""

from __future__ import annotations

import heapq
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st
from support.tracking import young_objects

from seatd.core.deadlines import Deadlines

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 50), st.sampled_from("abcde")),
        st.tuples(st.just("pop"), st.just(0), st.just("")),
    ),
    max_size=60,
)


@given(
    initial=st.lists(st.tuples(st.integers(0, 50), st.sampled_from("abcde")), max_size=10),
    ops=_ops,
)
def test_pairs_come_out_as_from_a_heap(
    initial: list[tuple[int, str]], ops: list[tuple[str, int, str]]
) -> None:
    deadlines = Deadlines((float(t), i) for t, i in initial)
    heap = [(float(t), i) for t, i in initial]
    heapq.heapify(heap)
    for op, when, item in ops:
        if op == "push":
            deadlines.push(float(when), item)
            heapq.heappush(heap, (float(when), item))
        elif heap:
            assert deadlines.first() == heap[0][0]
            assert deadlines.peek()[0] == heap[0][0]
            # Pairs due at the same time may come out in another order than the heap's.
            popped = deadlines.pop()
            heap.remove(popped)
            heapq.heapify(heap)
        assert len(deadlines) == len(heap)
        assert deadlines.first() == (heap[0][0] if heap else None)


def test_deadlines_in_time_order_make_no_object_per_deadline() -> None:
    deadlines = Deadlines()
    ids = [f"h{i}" for i in range(2000)]

    def push_all() -> None:
        for i, item in enumerate(ids):
            deadlines.push(1000.0 + i, item)

    assert young_objects(push_all) < 20  # a heap of pairs: 2,000
    deadlines.push(500.0, "early")  # out of order: one pair on the side
    assert deadlines.pop() == (500.0, "early")
    assert deadlines.pop() == (1000.0, "h0")


def test_an_empty_queue_holds_no_deque() -> None:
    """Every loaded event and every connection has one, most of them empty: a deque
    allocates 0.6 KiB up front (idle memory per connection and per event)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        queues = [Deadlines() for _ in range(1000)]
        for queue in queues[:500]:  # used, then emptied
            queue.push(1.0, "h")
            queue.pop()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 150 * len(queues), used
