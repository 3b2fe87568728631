"""Reply frames the gateway builds itself are the frames websockets would have sent."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from seatd.gateway.inbound import text_frame_header


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000, 1 << 20])
def test_text_frame_header_matches_websockets(length: int) -> None:
    payload = b"x" * length
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame_header(length) + payload == expected
