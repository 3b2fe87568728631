"""Pure seat rules: no asyncio, no I/O, no protocol. Time is an argument (``now``)."""

from __future__ import annotations

from seatd.core.commands import *  # noqa: F403
from seatd.core.commands import __all__ as _commands_all
from seatd.core.event_state import EventState
from seatd.core.model import *  # noqa: F403
from seatd.core.model import __all__ as _model_all

__all__ = ["EventState", *_commands_all, *_model_all]
