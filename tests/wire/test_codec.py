"""Codec helpers."""

from __future__ import annotations

import tracemalloc

import orjson

from protocol.codec import exact_bytes


def test_kept_output_occupies_its_length() -> None:
    """orjson's output holds a ~4 KiB buffer however short it is: what is kept gets copied."""
    reply = {"ok": True, "result": {"hold_id": "h" * 36}}
    tracemalloc.start()
    try:
        kept = [exact_bytes(orjson.dumps(reply)) for _ in range(200)]
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(orjson.loads(k) == reply for k in kept)
    assert size < 200 * 512, f"{size / 200:.0f} bytes each"
