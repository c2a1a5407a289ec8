"""icetools: record, decode, replay and watch icecream (icecc) build clusters."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from . import messages  # noqa: E402

__all__ = ["AsyncConnection", "Connection", "__version__", "messages"]


def __getattr__(name: str) -> Any:
    # The connections (and asyncio with them) load on first use: the command line's start-up
    # time is in every `icetools dump` or `stats` run.
    if name in ("AsyncConnection", "Connection"):
        from . import connection

        return getattr(connection, name)
    raise AttributeError(f"module 'icetools' has no attribute {name!r}")
