"""The ZeroMQ side of every process: socket set-up, the receive pump, open requests.

Sockets are plain (synchronous) pyzmq sockets driven from the asyncio loop through
``loop.add_reader`` on ``ZMQ_FD``: a round trip through ``zmq.asyncio`` costs about 3x
more on this hardware, and every hop of an eval pays it.

``ZMQ_FD`` is edge-triggered: it signals when the socket's state changes, and a send can
consume that signal. So a pump drains until ``EAGAIN``, and after sending outside the
pump the sender calls :meth:`Pump.kick` to re-check ``ZMQ_EVENTS``. Forgetting that
makes a socket look idle while messages wait in it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import zmq
from zmq.utils.monitor import parse_monitor_message

from .errors import ConnectionLost, RequestTimeout, ZmqcrossError
from .protocol import Limits, Message
from .security import ZAP_DOMAIN, CurveClient, CurveServer

__all__ = [
    "DRAIN_BATCH",
    "HIGH_WATER_MARK",
    "MonitorEvent",
    "OpenRequests",
    "Pending",
    "Pump",
    "closed_error",
    "configure_socket",
    "receive_frames",
    "send_frames",
    "watch_monitor",
]

log = logging.getLogger("zmqcross.transport")

DRAIN_BATCH = 256
"""Messages a pump handles before yielding to the event loop, so one busy socket cannot starve the rest."""

HIGH_WATER_MARK = 100_000
"""Messages queued per peer before libzmq refuses more (the default 1000 is small for eval fan-out)."""


# Plain ints, not pyzmq's Flag enum: on the hot path the enum arithmetic in pyzmq's
# send_multipart/recv_multipart costs more than the libzmq call itself.
_DONTWAIT = int(zmq.DONTWAIT)
_MORE = int(zmq.DONTWAIT | zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)


def send_frames(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
    """Send one multipart message without blocking (``zmq.Again`` when the queue is full)."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        sock.send(frame, _MORE if index < last else _DONTWAIT, copy=len(frame) < COPY_THRESHOLD)


def receive_frames(sock: zmq.Socket[Any]) -> list[bytes]:
    """Receive one whole multipart message without blocking (``zmq.Again`` when there is none)."""
    frames = [sock.recv(_DONTWAIT)]
    while sock.getsockopt(_RCVMORE):
        frames.append(sock.recv(_DONTWAIT))
    return frames


COPY_THRESHOLD = 65536
"""Frames at least this large are handed to libzmq without a copy (big eval results)."""


def configure_socket(
    sock: zmq.Socket[Any],
    limits: Limits,
    *,
    curve_server: CurveServer | None = None,
    curve_client: CurveClient | None = None,
) -> None:
    """Common options: no linger, frame size cap, queue sizes, and CURVE when configured."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_frame_bytes)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    if curve_server is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve_server.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve_server.secret_key)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    if curve_client is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve_client.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve_client.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve_client.secret_key)


class Pump:
    """Feeds every message arriving on ``sock`` to ``handle``, from the asyncio loop.

    ``receive`` reads one whole message without blocking (raising ``zmq.Again`` when
    there is none); the default returns its frames as a list of bytes.
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        handle: Callable[[Any], None],
        *,
        receive: Callable[[zmq.Socket[Any]], Any] | None = None,
        name: str,
    ) -> None:
        self.sock = sock
        self._handle = handle
        self._receive = receive or receive_frames
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._fd = cast(int, sock.getsockopt(zmq.FD))

    def start(self) -> None:
        """Begin reading; messages already waiting are handled on the next loop turn."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._drain)
        self._schedule()

    def stop(self) -> None:
        """Stop reading (idempotent). The socket itself is closed by its owner."""
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None

    def kick(self) -> None:
        """Call after sending on this socket outside the pump: a send may eat the FD's signal."""
        if (
            self._loop is not None
            and not self._scheduled
            and cast(int, self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN
        ):
            self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._scheduled = True
        self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        for _ in range(DRAIN_BATCH):
            if self._loop is None:
                return
            try:
                message = self._receive(self.sock)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ENOTSOCK or self.sock.closed:
                    return
                raise
            try:
                self._handle(message)
            except Exception:  # one bad message must not stop the pump
                log.exception("%s: handler failed on a message", self._name)
        if self._loop is not None:
            self._schedule()


@dataclass(frozen=True, slots=True)
class MonitorEvent:
    """One libzmq socket monitor event: its kind, value (errno or status) and endpoint."""

    event: zmq.Event
    value: int
    endpoint: str


def watch_monitor(sock: zmq.Socket[Any], on_event: Callable[[MonitorEvent], None], *, name: str) -> Pump:
    """A pump over ``sock``'s monitor socket, for handshake failures and disconnects."""
    events = (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_DISCONNECTED
    )
    monitor = sock.get_monitor_socket(events)

    def handle(frames: list[bytes]) -> None:
        parsed = parse_monitor_message(frames)
        raw = parsed["endpoint"]
        endpoint = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        on_event(MonitorEvent(zmq.Event(parsed["event"]), int(parsed["value"]), endpoint))

    return Pump(monitor, handle, name=name)


# --------------------------------------------------------------------------- open requests


Outcome = Message | ZmqcrossError
"""What an open request ends with: the answering message, or the error that ended it."""


@dataclass(slots=True)
class Pending:
    """One request waiting for its answer."""

    id: int
    deadline: float
    peer: bytes | None
    what: str
    frames: list[bytes] | None
    on_done: Callable[[Outcome], object]
    timer: asyncio.TimerHandle | None = None
    parked: bool = False


class OpenRequests:
    """Requests sent and not yet answered, each with a timer for its deadline.

    Request ids are unique per sender; the answer's ``reply_to`` finds the entry.
    Everything ends exactly once: answer, timeout, lost peer or close.
    """

    def __init__(self) -> None:
        self._next_id = 0
        self._open: dict[int, Pending] = {}

    def __len__(self) -> int:
        return len(self._open)

    def next_id(self) -> int:
        """A fresh request id."""
        self._next_id += 1
        return self._next_id

    def add(
        self,
        *,
        request_id: int,
        timeout: float,
        what: str,
        on_done: Callable[[Outcome], object],
        peer: bytes | None = None,
        frames: list[bytes] | None = None,
    ) -> Pending:
        """Track a request; ``on_done`` gets its outcome, a :class:`RequestTimeout` after ``timeout``."""
        loop = asyncio.get_running_loop()
        entry = Pending(request_id, time.time() + timeout, peer, what, frames, on_done)
        entry.timer = loop.call_later(timeout, self._expire, request_id, timeout)
        self._open[request_id] = entry
        return entry

    def future(
        self,
        *,
        request_id: int,
        timeout: float,
        what: str,
        peer: bytes | None = None,
        frames: list[bytes] | None = None,
    ) -> asyncio.Future[Outcome]:
        """Like :meth:`add`, with the outcome delivered to a future instead of a callback."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def settle(outcome: Outcome) -> None:
            if not fut.done():
                fut.set_result(outcome)

        self.add(request_id=request_id, timeout=timeout, what=what, on_done=settle, peer=peer, frames=frames)
        return fut

    def get(self, request_id: int) -> Pending | None:
        """The open entry for ``request_id``, if any."""
        return self._open.get(request_id)

    def finish(self, request_id: int | None, outcome: Outcome) -> bool:
        """End ``request_id`` with ``outcome``; False if it was not open (late or unknown)."""
        entry = self._open.pop(request_id, None) if request_id is not None else None
        if entry is None:
            return False
        if entry.timer is not None:
            entry.timer.cancel()
        entry.on_done(outcome)
        return True

    def _expire(self, request_id: int, timeout: float) -> None:
        entry = self._open.get(request_id)
        if entry is not None:
            self.finish(request_id, RequestTimeout(f"{entry.what}: no answer within {timeout:.3g} s"))

    def fail_peer(self, peer: bytes, error: ZmqcrossError) -> int:
        """End every request waiting on ``peer`` with ``error``; returns how many."""
        ids = [rid for rid, entry in self._open.items() if entry.peer == peer]
        for rid in ids:
            self.finish(rid, error)
        return len(ids)

    def fail_all(self, error: ZmqcrossError) -> None:
        """End every open request with ``error`` (on close)."""
        for rid in list(self._open):
            self.finish(rid, error)

    def parked(self) -> list[Pending]:
        """Entries the far side refused to run until we register again."""
        return [entry for entry in self._open.values() if entry.parked]


def closed_error(what: str) -> ConnectionLost:
    """The error for using a bridge or client that is not running."""
    return ConnectionLost(f"{what} is not running (call start()/connect() first, or it was closed)")
