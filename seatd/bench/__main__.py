"""``python -m seatd.bench``: the same as ``seatd bench``."""

from __future__ import annotations

from seatd.bench import main

raise SystemExit(main())
