"""The SDK needs nothing but the standard library, ``websockets`` and ``orjson``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import websockets

import protocol
import protocol.client

CHECK = """
import sys
import protocol.client
from protocol.client import SeatClient, Watch
names = {name.split(".")[0] for name in sys.modules}
print(sorted(names - set(sys.stdlib_module_names) - {"__main__"}))
"""


def test_importable_with_only_websockets_and_orjson(tmp_path: Path) -> None:
    # A path holding only the three packages: seatd and every other dependency are absent.
    for module in (protocol, websockets, orjson):
        source = Path(module.__file__ or "").parent
        (tmp_path / source.name).symlink_to(source, target_is_directory=True)
    done = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n{CHECK}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PYTHONNOUSERSITE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['orjson', 'protocol', 'websockets']"


def test_the_public_surface() -> None:
    exported = set(protocol.client.__all__)
    assert {"SeatClient", "Watch", "SeatUpdate", "Backoff"} <= exported
    assert {
        "RemoteError",
        "PermanentError",
        "TemporaryError",
        "InvalidRequestError",
        "NotFoundError",
        "ConflictError",
        "AccessError",
        "ClientClosedError",
    } <= exported
    assert {"HoldView", "ReservationView", "Released", "EventView", "EventPage"} <= exported
    assert all(hasattr(protocol.client, name) for name in exported)
    assert (
        protocol.client.__doc__ is not None and "async with SeatClient" in protocol.client.__doc__
    )
