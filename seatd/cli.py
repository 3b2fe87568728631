"""The ``seatd`` command: serve, init-db, create-event, close-event, token, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seatd.adapters.postgres import PostgresStore
    from seatd.config import Settings
    from seatd.runtime.ports import NewEvent

__all__ = ["main"]

DEMO_EVENT_ID = "demo"


def _settings_or_exit(*, need_secret: bool = True) -> object:
    from seatd.config import ConfigError, Settings

    env = dict(os.environ)
    if not need_secret:
        env.setdefault("SEATD_JWT_SECRET", "x" * 32)
    try:
        return Settings.from_env(env)
    except ConfigError as error:
        print(f"seatd: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    from seatd.app import run
    from seatd.config import Settings
    from seatd.gctune import tune_garbage_collector
    from seatd.logging import configure_logging

    settings = _settings_or_exit()
    assert isinstance(settings, Settings)
    configure_logging(settings.log_level, settings.log_format)
    tune_garbage_collector()
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, only slower
        asyncio.run(run(settings))
    else:
        uvloop.run(run(settings))
    return 0


def _init_db(args: argparse.Namespace) -> int:
    import asyncpg

    from seatd.config import Settings
    from seatd.errors import StoreUnavailable

    settings = _settings_or_exit(need_secret=False)
    assert isinstance(settings, Settings)
    sql = Path(args.file).read_text() if args.file else _bundled_schema()

    async def apply() -> None:
        try:
            conn = await asyncpg.connect(**settings.postgres_connection)
        except OSError as error:
            where = f"{settings.postgres_host}:{settings.postgres_port}"
            raise StoreUnavailable(f"cannot reach PostgreSQL at {where}: {error}") from error
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(apply())
    print("schema applied")
    return 0


def _bundled_schema() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "init.sql", here / "sql" / "init.sql"):
        if candidate.exists():
            return candidate.read_text()
    raise SystemExit("seatd: init.sql not found; pass --file PATH")


@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[PostgresStore]:
    """One connection to the settings' PostgreSQL, for a command's few statements."""
    from seatd.adapters.postgres import PostgresStore, connect_pool

    pool = await connect_pool(**settings.postgres_connection, max_size=1)
    try:
        yield PostgresStore(pool)
    finally:
        await pool.close()


def _create_event(args: argparse.Namespace) -> int:
    from seatd.config import Settings
    from seatd.errors import EventExists

    settings = _settings_or_exit(need_secret=False)
    assert isinstance(settings, Settings)
    event = _event_or_exit(args)

    async def create() -> bool:
        async with _store(settings) as store:
            try:
                await store.create_event(event)
            except EventExists:
                return False
        return True

    created = asyncio.run(create())
    if created:
        print(f"event created {event.info.event_id} ({len(event.seats)} seats)")
    else:  # its seats are the stored ones, not the layout asked for now
        print(f"event already exists: {event.info.event_id}")
    return 0 if created or args.demo else 1


def _close_event(args: argparse.Namespace) -> int:
    """Store the status, then tell the running instances over Redis: the event's actor stops
    (or resumes) taking holds at once. Without Redis the row is changed all the same and the
    instances read it when they reconnect to Redis or next load the event; the command says
    so and exits 1."""
    from redis.exceptions import RedisError

    from seatd.adapters.bus import STATUS_CHANNEL, status_notice
    from seatd.adapters.redis import make_client
    from seatd.config import Settings

    settings = _settings_or_exit(need_secret=False)
    assert isinstance(settings, Settings)
    status = "open" if args.reopen else "closed"

    async def change() -> bool:
        async with _store(settings) as store:
            return await store.set_event_status(args.event_id, status)

    async def announce() -> int:
        s = settings
        redis = make_client(s.redis_host, s.redis_port, s.redis_db, s.redis_password or None)
        try:
            return int(await redis.publish(STATUS_CHANNEL, status_notice(args.event_id, status)))
        finally:
            await redis.aclose()

    if not asyncio.run(change()):
        print(f"seatd {args.command}: no event {args.event_id}", file=sys.stderr)
        return 1
    try:
        told = asyncio.run(announce())
    except (RedisError, OSError) as error:
        print(
            f"seatd {args.command}: event {args.event_id} is {status} in PostgreSQL, but Redis "
            f"did not take the notice ({_one_line(error)}): a running instance that has the "
            "event loaded keeps its old status until it reconnects to Redis or loads the event "
            "again; run this again once this command can reach Redis",
            file=sys.stderr,
        )
        return 1
    print(f"event {args.event_id} is {status} ({told} running instance(s) told)")
    return 0


def _event_or_exit(args: argparse.Namespace) -> NewEvent:
    """The event the options describe, checked as the server checks a ``create_event``: a bad
    option is the user's mistake, said in one line (exit 2), not a traceback."""
    import orjson

    from protocol.codec import DecodeError, decode_request
    from protocol.messages import CreateEvent
    from seatd.errors import InvalidRequest
    from seatd.gateway.translate import new_event

    rows = _row_names(args.rows)
    blocks = [
        {"rows": rows, "seats_per_row": args.seats_per_row, "section": s, "category": c}
        for s, c in _sections(args.sections)
    ]
    frame = {
        "id": 1,
        "type": "create_event",
        "name": args.name,
        "venue": args.venue,
        "blocks": blocks,
    }
    if args.event_id:
        frame["event_id"] = args.event_id
    try:
        _, _, request = decode_request(orjson.dumps(frame))
        assert isinstance(request, CreateEvent)
        return new_event(request)
    except (DecodeError, InvalidRequest) as error:
        print(f"seatd create-event: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _row_names(count: int) -> list[str]:
    names: list[str] = []
    for i in range(count):
        name, n = "", i
        while True:
            name = chr(ord("A") + n % 26) + name
            n = n // 26 - 1
            if n < 0:
                break
        names.append(name)
    return names


def _sections(spec: str) -> list[tuple[str, str]]:
    result = []
    for part in spec.split(","):
        section, _, category = part.strip().partition(":")
        result.append((section, category or "standard"))
    return result


def _token(args: argparse.Namespace) -> int:
    from seatd.auth import SUBJECT_RULE, TokenAuthority, valid_subject

    secret = os.environ.get("SEATD_JWT_SECRET", "")
    if len(secret.encode()) < 32:
        print("seatd: set SEATD_JWT_SECRET (the server's secret) to mint a token", file=sys.stderr)
        return 2
    if not valid_subject(args.sub):
        print(f"seatd token: --sub {SUBJECT_RULE}", file=sys.stderr)
        return 2
    print(TokenAuthority(secret).mint(args.sub, args.role, ttl_s=args.ttl))
    return 0


def _lifetime(raw: str) -> float:
    """A token's lifetime: a token born expired (or a NaN or infinite one) is of no use."""
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 10 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds up to ten years")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seatd", description="Real-time event seat reservation service."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (configured by environment variables)")
    serve.set_defaults(func=_serve)

    init_db = sub.add_parser("init-db", help="apply the schema (init.sql) to POSTGRES_DB")
    init_db.add_argument("--file", help="schema file (default: the bundled init.sql)")
    init_db.set_defaults(func=_init_db)

    create = sub.add_parser("create-event", help="create an event with rows of numbered seats")
    create.add_argument(
        "--demo", action="store_true", help="the demo event (id 'demo'); fine if it exists"
    )
    create.add_argument("--event-id", default=None)
    create.add_argument("--name", default="Demo concert")
    create.add_argument("--venue", default="Demo hall")
    create.add_argument("--rows", type=int, default=10, help="rows per section (A, B, ...)")
    create.add_argument("--seats-per-row", type=int, default=20)
    create.add_argument(
        "--sections", default="floor:standard,balcony:premium", help="section[:category],..."
    )
    create.set_defaults(func=_create_event)

    close = sub.add_parser(
        "close-event", help="stop an event taking holds now (existing holds stay); --reopen"
    )
    close.add_argument("event_id")
    close.add_argument("--reopen", action="store_true", help="take holds again")
    close.set_defaults(func=_close_event)

    token = sub.add_parser("token", help="mint an access token signed with SEATD_JWT_SECRET")
    token.add_argument("--sub", required=True, help="the user id (or agent/admin id)")
    token.add_argument("--role", choices=["admin", "agent", "user"], default="user")
    token.add_argument("--ttl", type=_lifetime, default=86400.0, help="seconds until it expires")
    token.set_defaults(func=_token)

    bench = sub.add_parser("bench", help="load-test and verify seatd (seatd bench --help)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=lambda args: _bench(args.bench_args))
    return parser


def _bench(argv: Sequence[str]) -> int:
    from seatd.bench import main as bench_main

    return bench_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options are its own: argparse must not see them
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "demo", False) and args.event_id is None:
        args.event_id = DEMO_EVENT_ID
    try:
        result: int = args.func(args)
    except Exception as error:
        if not _is_environment_error(error):
            raise  # a bug: the traceback is what helps
        # The database, Redis or the port is not what the settings say: one line says which.
        print(f"seatd {args.command}: {_one_line(error)}", file=sys.stderr)
        return 1
    return result


def _is_environment_error(error: Exception) -> bool:
    """Errors that come from the setup, not from seatd: unreachable or refusing services, a
    port in use, a schema that does not apply."""
    import asyncpg

    from seatd.errors import StoreUnavailable

    return isinstance(
        error, OSError | StoreUnavailable | asyncpg.PostgresError | asyncpg.InterfaceError
    )


def _one_line(error: Exception) -> str:
    """The error's message on one line; asyncpg's own errors do not say they are PostgreSQL's."""
    import asyncpg

    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
        return f"PostgreSQL: {text}"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
