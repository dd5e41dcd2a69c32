"""What the relay core reads and writes: a ZeroMQ socket, and the machine's ends of cluster pipes.

Both are driven on the core's thread (:class:`~zmqcross.relay.RelayCore`) and handed what
arrives as whole messages (lists of frames). Writes from the core's own handlers are
held to the end of the round and leave together: many answers to the bridge as one
:class:`~zmqcross.protocol.Batch`, many records to one cluster as one ``sendmsg``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

import zmq

from .._records import RecordReader, pack
from .._transport import has_input, receive_frames, send_frames
from ..errors import ConnectionLost, ProtocolError
from ..protocol import DEFAULT_LIMITS, Limits, Message, batches, check_limits, encode
from ._loop import RelayCore

__all__ = ["DRAIN_MESSAGES", "PipeConn", "SocketLink", "record_pieces"]

log = logging.getLogger("zmqcross.relay")

DRAIN_MESSAGES = 256
"""Messages read from one socket per round, so one busy socket cannot starve the pipes."""

READS_PER_ROUND = 16
"""Reads from one pipe per round (each up to the reader's free space, 64 KiB or more)."""

_IOV_MAX = 512
"""Pieces handed to one ``sendmsg`` (Linux allows 1,024)."""


class SocketLink:
    """A ZeroMQ socket read on the core's thread and written from any thread, under one lock.

    The core drains it at every round (:meth:`RelayCore.every_round`) and sleeps on its
    ``ZMQ_FD``. That descriptor is edge-triggered, and a send can consume its signal while
    a message waits: so a send from another thread looks at ``ZMQ_EVENTS`` afterwards and
    wakes the core if something is there, and the core looks again after its own sends.
    ZeroMQ sockets are not thread-safe; the lock serialises every use of this one.
    """

    def __init__(
        self, core: RelayCore, sock: zmq.Socket[Any], on_frames: Callable[[list[bytes]], None]
    ) -> None:
        self.core = core
        self.sock = sock
        self._on_frames = on_frames
        self._lock = threading.Lock()
        self._held: list[list[bytes]] = []
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        self._detach: Callable[[], None] | None = None
        self.on_send_error: Callable[[str], None] = lambda reason: log.warning("%s", reason)

    def attach(self) -> None:
        """Start serving (core thread)."""
        self.core.add_reader(self._fd, _nothing)  # wakes the poll; every round drains
        self._detach = self.core.every_round(self._drain)

    def detach(self) -> None:
        """Stop serving (core thread); answers still held leave first."""
        self._flush()
        if self._detach is not None:
            self._detach()
            self._detach = None
        self.core.remove_reader(self._fd)

    def send(self, frames: list[bytes]) -> None:
        """Send one message now (any thread); ``zmq.Again`` when the queue is full."""
        with self._lock:
            try:
                send_frames(self.sock, frames)
            finally:
                if not self.core.on_thread and has_input(self.sock):
                    self.core.wake()

    def post(self, frames: list[bytes]) -> None:
        """Send at the end of this round, batched with the round's other answers (core thread)."""
        if not self._held:
            self.core.defer_flush(self._flush)
        self._held.append(frames)

    def _flush(self) -> None:
        held, self._held = self._held, []
        if not held:
            return
        with self._lock:
            sock = self.sock
            for frames in batches(held) if len(held) > 1 else held:
                try:
                    send_frames(sock, frames)
                except zmq.Again:
                    self.on_send_error("the queue to the bridge is full: an answer was dropped")
                except zmq.ZMQError as exc:
                    self.on_send_error(f"an answer to the bridge was not sent: {exc}")
            if has_input(sock):  # the sends may have eaten the descriptor's signal
                self.core.again()

    def _drain(self) -> bool:
        if self._detach is None:
            return False
        received = []
        with self._lock:
            sock = self.sock
            try:
                while has_input(sock):  # looking first is cheaper than a zmq.Again
                    received.append(receive_frames(sock))
                    if len(received) == DRAIN_MESSAGES:
                        break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.ENOTSOCK and not sock.closed:
                    raise
        on_frames = self._on_frames
        for frames in received:
            try:
                on_frames(frames)
            except Exception:  # one bad message must not stop the socket
                log.exception("relay core: a handler failed on a message")
        return len(received) == DRAIN_MESSAGES


def _nothing() -> None:
    pass


class PipeConn:
    """The machine's end of one cluster pipe, read and written on the core's thread.

    ``on_frames(conn, frames)`` gets each record's frames and ``on_closed(conn, exc)`` the
    end (once; ``exc`` None when this side closed it), both on the core's thread. The
    sending methods may be called from any thread: off the core's thread they queue the
    write with :meth:`RelayCore.submit`.
    """

    def __init__(
        self,
        core: RelayCore,
        conn: Connection,
        *,
        on_frames: Callable[[PipeConn, list[bytes]], None],
        on_closed: Callable[[PipeConn, Exception | None], None],
        name: str,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._core = core
        self._sock = socket.socket(fileno=_detach(conn))
        self._sock.setblocking(False)
        self._fd = self._sock.fileno()
        self._reader = RecordReader(limits)
        self._limits = limits
        self._on_frames = on_frames
        self._on_closed = on_closed
        self.name = name
        self.owner: Any = None
        """Whatever the pipe's user ties to it (the manager: its cluster record)."""
        self._out: list[bytes | memoryview] = []
        self._flushing = False
        self._closing = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<PipeConn {self.name}{' closed' if self._closed else ''}>"

    @property
    def open(self) -> bool:
        """Whether the other side can still be written to."""
        return not (self._closed or self._closing)

    def start(self) -> None:
        """Start serving on the core (any thread)."""
        self._core.submit(self._core.add_reader, self._fd, self._readable)

    def send(self, msg: Message) -> bool:
        """Queue ``msg`` for the cluster; False if the pipe is closed. Never blocks."""
        frames = encode(msg)
        check_limits(frames, self._limits)
        return self.send_frames(frames)

    def send_frames(self, frames: list[bytes]) -> bool:
        """Queue already-encoded frames (forwarded untouched); False if the pipe is closed."""
        if not self.open:
            return False
        if self._core.on_thread:
            self._post(record_pieces(frames))
        else:
            self._core.submit(self._post, record_pieces(frames))
        return True

    def post(self, pieces: list[bytes]) -> None:
        """Queue one record already packed with :func:`record_pieces`, from the core's own
        thread, as the hot path does: the pipe open, the caller known to be on the core (no
        check of either). An eval to several clusters is packed once for all their pipes."""
        self._post(pieces)

    def close(self) -> None:
        """Close after what is already queued is written (the cluster sees end of file)."""
        if self._closing or self._closed:
            return
        self._closing = True
        if self._core.on_thread:
            self._close_when_flushed()
        else:
            self._core.submit(self._close_when_flushed)

    # ------------------------------------------------------------------ the core's thread

    def _post(self, pieces: list[bytes]) -> None:
        if self._closed:
            return
        self._out.extend(pieces)
        if not self._flushing:
            self._flushing = True
            self._core.defer_flush(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        out = self._out
        while out:
            pieces = out[:_IOV_MAX]
            try:
                sent = self._sock.sendmsg(pieces)
            except BlockingIOError:
                self._core.add_writer(self._fd, self._flush)
                return
            except OSError as exc:
                self._lost(exc)
                return
            if sent == sum(map(len, pieces)):  # all of it, nearly always: one cut
                del out[: len(pieces)]
                continue
            while sent:
                size = len(out[0])
                if sent >= size:
                    sent -= size
                    del out[0]
                else:
                    out[0] = memoryview(out[0])[sent:]
                    sent = 0
        self._core.remove_writer(self._fd)
        if self._closing:
            self._lost(None)

    def _close_when_flushed(self) -> None:
        if self._closed:
            return
        if not self._out:
            self._lost(None)
        elif not self._flushing:
            self._flush()

    def _readable(self) -> None:
        reader = self._reader
        for _ in range(READS_PER_ROUND):
            try:
                count = self._sock.recv_into(reader.buffer())
            except BlockingIOError:
                break
            except OSError as exc:
                self._lost(exc if exc.errno != errno.ECONNRESET else None)
                return
            if count == 0:
                self._deliver()
                self._lost(None)
                return
            reader.advance(count)
            if not self._deliver():
                return

    def _deliver(self) -> bool:
        try:
            for frames in self._reader.records():
                try:
                    self._on_frames(self, frames)
                except Exception:  # one bad message must not kill the pipe
                    log.exception("%s: pipe message handler failed", self.name)
        except ProtocolError as exc:  # the stream is out of step: nothing after this is trustworthy
            log.error("%s: %s", self.name, exc.message)
            self._lost(ConnectionLost(f"{self.name}: {exc.message}"))
            return False
        return True

    def _lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.clear()
        self._core.remove_reader(self._fd)
        self._core.remove_writer(self._fd)
        self._sock.close()
        self._on_closed(self, exc)


def record_pieces(frames: list[bytes]) -> list[bytes]:
    """``frames`` as one pipe record's pieces for ``sendmsg`` (an empty frame is no piece)."""
    pieces = pack(frames)
    if not all(pieces):
        pieces = [piece for piece in pieces if piece]
    return pieces


def _detach(conn: Connection) -> int:
    """``conn``'s descriptor, now owned by the caller (``conn`` itself is closed)."""
    fd = os.dup(conn.fileno())
    conn.close()
    return fd
