"""``GET /metrics``: served only when SEATD_METRICS=on, and counting what the actors did."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from support.client import client, create_event
from support.server import RunningServer, base_env, in_process_server

from seatd.bench.serverstats import actor_stats, parse_metrics


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


async def test_metrics_count_connections_events_batches_and_commits(
    service_env: dict[str, str],
) -> None:
    async with in_process_server(base_env(service_env, SEATD_METRICS="on")) as server:
        url = server.http_url("/metrics")
        status, content_type, before_text = await asyncio.to_thread(_get, url)
        assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
        before = parse_metrics(before_text)
        async with (
            client(server.url, "organiser", "admin") as admin,
            client(server.url, "alice") as alice,
        ):
            event = await create_event(admin, seats=4)
            # Three requests the event's actor serves; a refusal too is a command of a batch.
            hold = await alice.ok("hold", event_id=event["event_id"], seat_ids=["A-1"])
            await alice.error("hold", event_id=event["event_id"], seat_ids=["A-1"])
            await alice.ok("reserve", event_id=event["event_id"], hold_id=hold["hold_id"])
            status, _, during_text = await asyncio.to_thread(_get, url)
        during = parse_metrics(during_text)
        assert status == 200
        assert during["seatd_connections"] == 2
        assert during["seatd_events_loaded"] >= 1
        assert during["seatd_requests_in_progress"] == 0
        actors = actor_stats([before], [during])
        assert actors is not None
        assert actors["commands"] >= 3
        assert 1 <= actors["batches"] <= actors["commands"]
        # The hold and the reservation each committed; the refusal (no key) wrote nothing.
        assert actors["commits"] >= 2
        assert actors["commit_failures"] == 0
        assert actors["commit_ms"]["p50"] is not None
        assert 0 < actors["commit_share"] <= 1


async def test_without_the_setting_metrics_are_not_served(server: RunningServer) -> None:
    status, content_type, body = await asyncio.to_thread(_get, server.http_url("/metrics"))
    assert (status, content_type) == (404, "application/json")
    assert "SEATD_METRICS=on" in body
    assert "seatd_" not in body
