"""The one exception hierarchy of icetools.

Every error a user can cause (bad file, bad peer, bad argument) is an :class:`IcetoolsError`
whose message is one line, with the numbers that locate the problem. The command line turns
these into ``icetools: <message>`` and a non-zero exit; anything else escaping is a bug.

Like h11, protocol errors are split by whose fault they are: :class:`RemoteProtocolError`
(the peer sent something invalid) and :class:`LocalProtocolError` (our caller misused the API,
e.g. encoding a message that does not exist at the negotiated version).
"""

from __future__ import annotations

import os


class IcetoolsError(Exception):
    """Base of every error icetools raises on purpose."""


class ProtocolError(IcetoolsError):
    """Something about the icecream wire protocol is wrong."""


class RemoteProtocolError(ProtocolError):
    """The peer (or a recorded peer) sent bytes that break the protocol."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow."""


class FrameTooLarge(RemoteProtocolError):
    """A frame's length prefix exceeds icecream's MAX_MSG_SIZE."""


class HandshakeError(RemoteProtocolError):
    """The version handshake failed (peer too old, absurd version, mismatch)."""


class DecodeError(RemoteProtocolError):
    """A frame does not match the layout of its message type at the negotiated version."""


class ConnectionClosed(IcetoolsError):
    """The peer closed the connection (possibly in the middle of a frame)."""


class SchedulerNotFound(IcetoolsError):
    """No scheduler could be located or reached."""


class CaptureError(IcetoolsError):
    """A capture file is missing, not a capture, or damaged beyond its torn tail."""


class CaptureDamage(CaptureError):
    """A capture is damaged at byte ``offset`` (and not merely cut short at its end): what a
    salvaging reader skips."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset
        #: Set by the reading loop that met the damage: the time of the last good record (µs)
        #: and, for pump(), what it had done before it (a PumpResult).
        self.last_us = 0
        self.partial: object = None


class NewerFormatError(CaptureError):
    """The capture was written by a newer icetools with a format this one cannot read."""


class OptionError(IcetoolsError):
    """Options that are each valid but contradict each other (e.g. --since after --until)."""


class OutputError(IcetoolsError):
    """A file icetools was asked to write cannot be written."""


def describe_os_error(error: OSError) -> str:
    """An OSError in a few words, for the end of a one-line message (asyncio's own text
    repeats the address the caller already names)."""
    return os.strerror(error.errno).lower() if error.errno else str(error)
