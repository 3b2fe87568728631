"""The layering of DESIGN: core <- runtime <- adapters/gateway <- app, protocol stands alone.

Each rule lists modules a package must never import; a violation names the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RULES: list[tuple[str, tuple[str, ...]]] = [
    (
        "seatd/core",
        (
            "asyncio",
            "asyncpg",
            "redis",
            "websockets",
            "orjson",
            "protocol",
            "seatd.runtime",
            "seatd.adapters",
            "seatd.gateway",
            "seatd.app",
        ),
    ),
    (
        "seatd/runtime",
        (
            "asyncpg",
            "redis",
            "websockets",
            "protocol",
            "seatd.adapters",
            "seatd.gateway",
            "seatd.app",
        ),
    ),
    ("seatd/adapters", ("websockets", "protocol", "seatd.gateway", "seatd.app")),
    ("seatd/gateway", ("asyncpg", "redis", "seatd.adapters", "seatd.app")),
    ("protocol", ("seatd", "asyncpg", "redis", "structlog")),
]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize(("package", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_package_does_not_import_outer_layers(package: str, forbidden: tuple[str, ...]) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        for line, name in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in forbidden)
    ]
    assert not violations, "\n".join(violations)


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom seatd.runtime.actor import EventActor\n")
    assert [name for _, name in _imports(bad)] == ["asyncio", "seatd.runtime.actor"]


def test_every_service_error_code_is_registered_in_the_protocol() -> None:
    import seatd.errors as service_errors
    from protocol.errors import ERROR_CODES

    concrete = [
        (name, getattr(service_errors, name))
        for name in service_errors.__all__
        if "code" in vars(getattr(service_errors, name))  # the bases only group codes
    ]
    assert len(concrete) >= 15
    for name, cls in concrete:
        entry = ERROR_CODES.get(cls.code)
        assert entry is not None, f"{name}.code {cls.code!r} is not in protocol.errors"
        assert entry.temporary == cls.temporary, f"{name}: temporary flag differs from the registry"


def test_fast_uuids_are_version_4_uuids() -> None:
    import uuid

    from seatd.gateway.translate import new_uuid

    ids = {new_uuid() for _ in range(1000)}
    assert len(ids) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_every_redis_key_of_an_event_shares_its_cluster_hash_tag() -> None:
    """Redis Cluster puts keys with the same {tag} in one slot: one event, one slot. (The
    scripts that batch several events per call, the mirror's flush and the lease claims,
    touch several slots: on a cluster they would need a call per slot. See ``_MIRROR``.)"""
    from seatd.adapters.redis import hold_key, lease_key, parse_hold_key, user_counts_key

    event_id = "gala-2026"
    keys = [hold_key(event_id, "h1"), user_counts_key(event_id), lease_key(event_id)]
    assert all(key.count("{") == 1 and "{gala-2026}" in key for key in keys), keys
    assert parse_hold_key(hold_key(event_id, "h1")) == (event_id, "h1")
    assert parse_hold_key(user_counts_key(event_id)) is None


async def test_the_suite_runs_on_the_loop_the_service_runs_on() -> None:
    """``seatd serve`` runs on uvloop (seatd/cli.py); conftest.py gives the tests the same."""
    import asyncio

    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
