"""icetools: record, decode, replay and watch icecream (icecc) build clusters."""

__version__ = "0.1.0"

from . import messages  # noqa: E402
from .connection import AsyncConnection, Connection  # noqa: E402

__all__ = ["AsyncConnection", "Connection", "__version__", "messages"]
