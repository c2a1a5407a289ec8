"""A scheduler scripted inside a test, for the edge cases a real scheduler cannot produce on
demand (a peer offering protocol 20 or 1000, one that closes mid-frame, garbage, a restart at an
exact frame). Everything it does is plain sockets on 127.0.0.1; it knows nothing of icetools
beyond the wire format written out by hand here."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable


def frame(type_word: int, payload: bytes = b"") -> bytes:
    return struct.pack(">II", len(payload) + 4, type_word) + payload


def string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">I", len(raw) + 1) + raw + b"\0"


def mon_stats(host_id: int, text: str) -> bytes:
    return frame(0x57, struct.pack(">I", host_id) + string(text))


def mon_get_cs(job_id: int, host_id: int, filename: str, lang: int = 0) -> bytes:
    return frame(0x53, string(filename) + struct.pack(">III", lang, job_id, host_id))


def mon_job_begin(job_id: int, stime: int, host_id: int) -> bytes:
    return frame(0x54, struct.pack(">III", job_id, stime, host_id))


def mon_job_done(job_id: int, exitcode: int, real_msec: int = 0, client_count: int | None = 0) -> bytes:
    body = struct.pack(">Ii9I", job_id, exitcode, real_msec, 0, 0, 0, 100, 200, 50, 80, 0)
    if client_count is not None:
        body += struct.pack(">I", client_count)
    return frame(0x55, body)


Script = Callable[[socket.socket], None]


class ScriptedScheduler:
    """Accepts connections on 127.0.0.1 and runs ``script(sock)`` for each, in a thread.

    ``handshake(sock, version)`` does the server side of icecream's version handshake.
    """

    def __init__(self, script: Script, port: int = 0) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        #: time.monotonic() of each accepted connection, to count them within a window.
        self.accepted: list[float] = []
        self.received: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                self.script(sock)
            except (OSError, EOFError):
                pass  # the client went away first: that is its business

    def connections_since(self, t: float) -> int:
        """Connections accepted at or after ``t`` (a time.monotonic() value)."""
        return sum(1 for at in list(self.accepted) if at >= t)

    def stop(self) -> None:
        self._stopped.set()
        # close() alone does not wake a thread blocked in accept() on Linux; shutdown() does.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._accept_thread.join(5)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> ScriptedScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"peer closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def handshake(sock: socket.socket, version: int = 43) -> int:
    """Server side of the handshake; returns the negotiated protocol."""
    sock.sendall(struct.pack("<I", version))
    (peer,) = struct.unpack("<I", recv_exact(sock, 4))
    negotiated = min(peer, version)
    sock.sendall(struct.pack("<I", negotiated))
    (confirm,) = struct.unpack("<I", recv_exact(sock, 4))
    assert confirm == negotiated, (confirm, negotiated)
    return negotiated


def wait_closed(sock: socket.socket, timeout: float = 30.0) -> None:
    """Block until the peer closes (or ``timeout``), discarding what it sends."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


# ---- hostile peers ------------------------------------------------------------------------


def reset(sock: socket.socket) -> None:
    """Make the coming close() a reset (RST), as a crashing or firewalled peer's would be."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reset_after_handshake(sock: socket.socket) -> None:
    """Complete the handshake, then reset the connection at once."""
    handshake(sock)
    reset(sock)


def close_after_login(sock: socket.socket) -> None:
    """Complete the handshake, read MON_LOGIN, hang up: a scheduler that lets us in and out."""
    handshake(sock)
    recv_exact(sock, 8)


def frames_then_huge_length(frames: list[bytes]) -> Script:
    """Whole frames, then a length prefix of 2**31, all in the same write."""

    def script(sock: socket.socket) -> None:
        handshake(sock)
        recv_exact(sock, 8)
        sock.sendall(b"".join(frames) + struct.pack(">II", 1 << 31, 0x57))
        wait_closed(sock, 30)

    return script


def first_then(first: Script, then: Script) -> Script:
    """``first`` for the first connection, ``then`` for every later one: a recording that was
    running well when its scheduler turned hostile."""
    lock = threading.Lock()
    used = [False]

    def script(sock: socket.socket) -> None:
        with lock:
            mine, used[0] = not used[0], True
        (first if mine else then)(sock)

    return script
