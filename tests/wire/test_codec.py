"""Codec helpers."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from protocol.codec import DecodeError, decode_request, exact_bytes


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


def test_format_time_is_exactly_the_datetime_formatting() -> None:
    """The caches (per second, and of the last times formatted) must not change a single
    reply: the same string as datetime's isoformat (microseconds rounded half to even, then
    truncated to milliseconds), formatted afresh or again."""
    import random
    from datetime import UTC, datetime

    from protocol.codec import format_time

    def reference(seconds: float) -> str:
        text = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")

    rng = random.Random(7)
    base = 1_764_000_000
    values = [rng.uniform(-62_135_596_799, 253_402_300_799) for _ in range(20_000)]
    values += [rng.randint(1_700_000_000_000, 1_800_000_000_000) / 1000 for _ in range(20_000)]
    values += [base + k / 1e6 for k in range(-1500, 1500)]  # around a second's edges
    values += [0.0, -0.5, -1e-7, base + 0.9995, base + 0.9999995, base - 5e-7, base + 0.1234565]
    assert [v for v in values if format_time(v) != reference(v)] == []
    again = [v for v in values if format_time(v) != reference(v) or format_time(v) != reference(v)]
    assert again == []


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ('{"type": "ping"}', "$.id is missing"),
        ('{"id": null, "type": "ping"}', "$.id must be a non-empty string"),
        ('{"id": 9223372036854775808, "type": "ping"}', "$.id must be an integer in the signed"),
        ('{"id": true, "type": "ping"}', "$.id must be a non-empty string"),
    ],
)
def test_a_bad_id_is_named_for_what_is_wrong_with_it(frame: str, message: str) -> None:
    with pytest.raises(DecodeError) as refused:
        decode_request(frame)
    assert refused.value.code == "invalid_request" and str(refused.value.message).startswith(
        message
    ), refused.value.message
