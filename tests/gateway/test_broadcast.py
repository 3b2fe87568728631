"""The broadcaster between instances: what it publishes, relays, deduplicates and keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from support.tracking import tracked_objects

from seatd.core import Hold, HoldCreated, HoldEnded, HoldEndReason, HoldExtended
from seatd.gateway.broadcast import _WATCHER_SHARDS, Broadcaster


@dataclass(eq=False)
class Sink:
    frames: list[bytes] = field(default_factory=list)
    ended: list[tuple[str, HoldEndReason | None]] = field(default_factory=list)

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def hold_changed(self, event_id: str, hold: Hold, ended: HoldEndReason | None) -> None:
        self.ended.append((hold.hold_id, ended))


def _hold(hold_id: str, seat: str) -> Hold:
    return Hold(hold_id, "u1", (seat,), 0.0, 100.0, 200.0)


def _push(from_version: int, version: int) -> bytes:
    return orjson.dumps(
        {
            "type": "availability",
            "event_id": "e1",
            "from_version": from_version,
            "version": version,
            "changes": [{"seat_id": "A-1", "state": "available"}],
        }
    )


async def test_an_owner_publishes_every_push_but_keeps_history_only_when_watched() -> None:
    published: list[tuple[str, bytes]] = []
    broadcaster = Broadcaster(interval=0, publish=lambda e, f: published.append((e, f)))
    for version in range(1, 40):
        broadcaster.committed("e1", version, [HoldCreated(_hold(f"h{version}", "A-1"))], None)
    pushes = [orjson.loads(f) for e, f in published if orjson.loads(f)["type"] == "availability"]
    assert [p["version"] for p in pushes] == list(range(1, 40))
    topic = broadcaster._topics["e1"]
    assert not topic.history  # nobody watches: nothing kept for resuming


async def test_relayed_pushes_are_sent_once_in_version_order() -> None:
    broadcaster = Broadcaster(interval=0)
    watcher = Sink()
    broadcaster.begin("e1", watcher)
    broadcaster.complete("e1", watcher, 0, None)
    for frame in (_push(1, 1), _push(1, 1), _push(2, 3), _push(2, 2), _push(6, 6)):
        broadcaster.relayed("e1", frame)
    versions = [
        (orjson.loads(f)["from_version"], orjson.loads(f)["version"]) for f in watcher.frames
    ]
    # The duplicate and the stale push are dropped; the gap (4-5 missing) is passed on for the
    # client to notice and resubscribe.
    assert versions == [(1, 1), (2, 3), (6, 6)]


async def test_hold_news_reaches_followers_here_but_not_from_ourselves() -> None:
    broadcaster = Broadcaster(instance_id="me", publish=lambda e, f: None)
    follower = Sink()
    broadcaster.watch_hold("e1", "h1", follower)
    news = [["h1", "u1", ["A-1"], 100.0, 200.0, "expired"]]
    broadcaster.relayed("e1", orjson.dumps({"type": "holds", "from": "me", "holds": news}))
    assert follower.ended == []  # our own news echoed back: told at commit already
    broadcaster.relayed("e1", orjson.dumps({"type": "holds", "from": "other", "holds": news}))
    assert follower.ended == [("h1", HoldEndReason.EXPIRED)]
    # The hold ended: nobody here follows it any more.
    broadcaster.relayed("e1", orjson.dumps({"type": "holds", "from": "other", "holds": news}))
    assert follower.ended == [("h1", HoldEndReason.EXPIRED)]


async def test_an_owner_publishes_hold_news_with_the_batch() -> None:
    published: list[bytes] = []
    broadcaster = Broadcaster(
        interval=0, instance_id="me", publish=lambda e, f: published.append(f)
    )
    broadcaster.committed("e1", 1, [HoldEnded(_hold("h9", "B-2"), HoldEndReason.RELEASED)], None)
    news = [orjson.loads(f) for f in published if orjson.loads(f)["type"] == "holds"]
    assert news == [
        {"type": "holds", "from": "me", "holds": [["h9", "u1", ["B-2"], 100.0, 200.0, "released"]]}
    ]


async def test_while_no_other_instance_exists_nothing_is_built_or_published() -> None:
    published: list[tuple[str, bytes]] = []
    peers = {"exist": False}
    broadcaster = Broadcaster(
        interval=0,
        publish=lambda e, f: published.append((e, f)),
        publishing=lambda: peers["exist"],
    )
    local = Sink()
    broadcaster.begin("e2", local)
    broadcaster.complete("e2", local, 0, None)
    broadcaster.committed("e1", 1, [HoldCreated(_hold("h1", "A-1"))], None)
    broadcaster.committed("e2", 1, [HoldCreated(_hold("h2", "A-1"))], None)
    assert published == []
    assert "e1" not in broadcaster._topics  # nothing kept for an event nobody watches
    assert [orjson.loads(f)["version"] for f in local.frames] == [1]  # watchers here still told
    peers["exist"] = True
    broadcaster.committed("e1", 2, [HoldEnded(_hold("h1", "A-1"), HoldEndReason.RELEASED)], None)
    assert sorted(orjson.loads(f)["type"] for e, f in published if e == "e1") == [
        "availability",
        "holds",
    ]


async def test_every_follower_of_a_hold_is_told_until_it_stops_following() -> None:
    broadcaster = Broadcaster(instance_id="me", publish=lambda e, f: None)
    first, second = Sink(), Sink()
    broadcaster.watch_hold("e1", "h1", first)
    broadcaster.watch_hold("e1", "h1", first)  # again: still told once
    broadcaster.watch_hold("e1", "h1", second)
    broadcaster.committed("e1", 1, [HoldExtended(_hold("h1", "A-1"))], None)
    assert first.ended == [("h1", None)] and second.ended == [("h1", None)]
    broadcaster.unwatch_hold("e1", "h1", first)
    broadcaster.unwatch_hold("e1", "h1", first)  # again: nothing happens
    assert broadcaster.follows_holds("e1")
    broadcaster.committed("e1", 2, [HoldEnded(_hold("h1", "A-1"), HoldEndReason.RELEASED)], None)
    assert first.ended == [("h1", None)]
    assert second.ended == [("h1", None), ("h1", HoldEndReason.RELEASED)]
    assert not broadcaster.follows_holds("e1")  # the hold ended: nobody follows it


async def test_a_hold_s_only_follower_stopping_drops_the_hold() -> None:
    broadcaster = Broadcaster(instance_id="me", publish=lambda e, f: None)
    follower, stranger = Sink(), Sink()
    broadcaster.watch_hold("e1", "h1", follower)
    broadcaster.unwatch_hold("e1", "h1", stranger)  # not a follower: changes nothing
    assert broadcaster.follows_holds("e1")
    broadcaster.unwatch_hold("e1", "h1", follower)
    assert not broadcaster.follows_holds("e1")
    broadcaster.committed("e1", 1, [HoldExtended(_hold("h1", "A-1"))], None)
    assert follower.ended == []


async def test_an_event_is_followed_while_any_of_its_holds_is() -> None:
    interest: list[tuple[str, str]] = []
    broadcaster = Broadcaster(
        instance_id="me",
        publish=lambda e, f: None,
        watched=lambda e: interest.append(("watched", e)),
        unwatched=lambda e: interest.append(("unwatched", e)),
    )
    follower = Sink()
    for hold_id in ("h1", "h2", "h3"):
        broadcaster.watch_hold("e1", hold_id, follower)
    broadcaster.watch_hold("e2", "h4", follower)
    broadcaster.watch_hold("e1", "h1", Sink())  # a second follower: not a second hold
    assert interest == [("watched", "e1"), ("watched", "e2")]
    broadcaster.unwatch_hold("e1", "h2", follower)
    broadcaster.committed("e1", 1, [HoldEnded(_hold("h3", "A-3"), HoldEndReason.EXPIRED)], None)
    broadcaster.unwatch_hold("e1", "h1", follower)  # its other follower still follows it
    assert broadcaster.follows_holds("e1") and broadcaster.follows_holds("e2")
    assert interest == [("watched", "e1"), ("watched", "e2")]
    broadcaster.committed("e1", 2, [HoldEnded(_hold("h1", "A-1"), HoldEndReason.RELEASED)], None)
    assert not broadcaster.follows_holds("e1") and broadcaster.follows_holds("e2")
    assert interest[2:] == [("unwatched", "e1")]
    broadcaster.unwatch_hold("e2", "h4", follower)
    assert interest[3:] == [("unwatched", "e2")]


async def test_followed_holds_leave_the_garbage_collector_after_a_pass() -> None:
    broadcaster = Broadcaster(instance_id="me", publish=lambda e, f: None)
    followers = [Sink() for _ in range(10)]
    before = tracked_objects()
    for i in range(2000):
        broadcaster.watch_hold("e1", f"h{i}", followers[i % 10])
    # The table's shards, each a dict holding connections: a fixed number, none per hold.
    assert tracked_objects() - before < 50 + _WATCHER_SHARDS
