"""The ZeroMQ side of every process: socket set-up, the receive pump, write coalescing.

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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import zmq
from zmq.utils.monitor import parse_monitor_message

from ._malloc import share_one_arena
from .errors import ConnectionLost
from .protocol import Limits, batches
from .security import ZAP_DOMAIN, CurveClient, CurveServer

__all__ = [
    "CORK",
    "DISCARD_SLICE",
    "DRAIN_BATCH",
    "DRAIN_SECONDS",
    "HIGH_WATER_MARK",
    "Cork",
    "MonitorEvent",
    "Outbox",
    "Oversized",
    "Pump",
    "RoutedReceiver",
    "closed_error",
    "configure_socket",
    "new_context",
    "receive_frames",
    "send_frames",
    "watch_monitor",
]

log = logging.getLogger("zmqcross._transport")

DRAIN_BATCH = 256
"""Messages a pump handles before yielding to the event loop, so one busy socket cannot starve the rest."""

DRAIN_SECONDS = 0.005
"""Seconds a pump may keep the loop before yielding, whatever the count: one received
message may be a :class:`~zmqcross.protocol.Batch` of up to 256."""

HIGH_WATER_MARK = 100_000
"""Messages queued per peer before libzmq refuses more (the default 1000 is small for eval fan-out)."""


# Plain ints, not pyzmq's Flag enum: on the hot path the enum arithmetic in pyzmq's
# send_multipart/recv_multipart costs more than the libzmq call itself.
_DONTWAIT = int(zmq.DONTWAIT)
_MORE = int(zmq.DONTWAIT | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# ZMQ_EVENTS as a plain int: getsockopt makes it a PollEvent, and `&` on that is enum arithmetic.
_get: Callable[[zmq.Socket[Any], int], int] = zmq.backend.Socket.get  # type: ignore[assignment]
# pyzmq's Cython send, without the Python wrapper around it (0.8 against 1.6 us a frame here).
_send: Callable[..., Any] = zmq.backend.Socket.send
# And its Cython recv; a zmq.Frame carries `more`, read without getsockopt(RCVMORE).
_recv: Callable[..., Any] = zmq.backend.Socket.recv


def has_input(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits on ``sock`` (ZMQ_EVENTS; it also re-arms the socket's FD)."""
    return bool(_get(sock, _EVENTS) & _POLLIN)


def send_frames(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
    """Send one multipart message without blocking (``zmq.Again`` when the queue is full)."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        _send(sock, frame, _MORE if index < last else _DONTWAIT, len(frame) < COPY_THRESHOLD, False)


def receive_frames(sock: zmq.Socket[Any]) -> list[bytes]:
    """Receive one whole multipart message without blocking (``zmq.Again`` when there is none).

    Each frame is read as a ``zmq.Frame`` whose ``more`` libzmq filled in, then copied:
    ``getsockopt(RCVMORE)`` per frame costs more than that copy (see :class:`RoutedReceiver`).
    """
    frame = _recv(sock, _DONTWAIT, False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv(sock, _DONTWAIT, False)
        frames.append(frame.bytes)
    return frames


DISCARD_SLICE = 512
"""Frames of an over-limit message read and dropped per call: 0.5-2 ms here, so
discarding a message of a million frames lets the loop run between slices."""


@dataclass(frozen=True, slots=True)
class Oversized:
    """A message that broke a limit while it arrived: read to its end and dropped, never kept.

    ``first`` is its routing frame (who sent it); ``reason`` names the limit, in the
    words of :func:`~zmqcross.protocol.check_limits`.
    """

    first: zmq.Frame
    reason: str


class RoutedReceiver:
    """Reads a ROUTER's messages, counting frames and bytes as they arrive.

    Called by a :class:`Pump`, it returns ``(routing frame, body frames)`` for a
    message within ``max_frames`` and ``max_message_bytes`` (body frames only, as
    :func:`~zmqcross.protocol.decode` counts them), :class:`Oversized` once a message
    that broke one has been read to its end, or ``None`` while it is still discarding
    one: that goes on over as many calls and loop turns as it needs, nothing of it kept.

    What this can and cannot save, measured on loopback (libzmq 4.3.5, pyzmq 27):

    - libzmq makes a multipart message readable only once its last frame arrived: a
      frame that is not the last is never flushed to the reader, and ``RCVHWM`` counts
      whole messages, so nothing bounds the frames of one message. The whole message is
      in libzmq's memory before the first byte of it is readable: 1,000,000 frames of
      1 byte (3 MB on the wire) cost +61 MB there (one 64-byte ``zmq_msg_t`` each);
      96 frames of 1 MB cost +92 MB; 200,000 frames of 500 bytes cost +172 MB.
      ``MAXMSGSIZE`` bounds each frame only. CURVE (only allow-listed keys get to send)
      and the process's memory limit are the bounds on that.
    - Python's share is avoidable: reading such a message into a list (the old path)
      doubled the peak (+184 MB for the 92 MB message; +277 MB for the 172 MB one);
      reading with ``copy=False`` and dropping each frame frees libzmq's copy as it
      goes and adds nothing.
    - Time: ``recv(copy=False)`` and ``Frame.more`` cost 1.0-1.3 us a frame; ``recv()``
      plus ``getsockopt(RCVMORE)`` 1.6-2.2 us (pyzmq looks the option up in an enum each
      call). A ROUTER hands out nothing else until a message is read to its end, so
      other peers wait about 1 us per hostile frame (0.6 s for 500,000), but the loop
      does not: it runs between slices of :data:`DISCARD_SLICE` frames.
    """

    __slots__ = ("_bytes", "_first", "_frames", "_max_bytes", "_max_frames")

    def __init__(self, limits: Limits) -> None:
        self._max_frames = limits.max_frames
        self._max_bytes = limits.max_message_bytes
        self._first: zmq.Frame | None = None  # the routing frame of the message being discarded
        self._frames = 0  # its body frames and bytes so far
        self._bytes = 0

    @property
    def discarding(self) -> bool:
        """Whether the socket is in the middle of a message being read and dropped."""
        return self._first is not None

    def __call__(self, sock: zmq.Socket[Any]) -> tuple[zmq.Frame, list[bytes]] | Oversized | None:
        if self._first is not None:
            return self._discard(sock)
        # The routing frame is kept as a zmq.Frame: its User-Id (the CURVE key ZAP
        # admitted) and Peer-Address properties are read from it. The rest of the
        # message is here once its first part is, so DONTWAIT cannot split it.
        first = sock.recv(_DONTWAIT, copy=False)
        body: list[bytes] = []
        if not first.more:
            return first, body
        recv = sock.recv
        max_frames, max_bytes = self._max_frames, self._max_bytes
        total = 0
        # Frame.more is read in C by recv(copy=False); getsockopt(RCVMORE) would cost
        # more than the copy (see the class docstring).
        while True:
            frame = recv(_DONTWAIT, copy=False)
            data = frame.bytes
            body.append(data)
            total += len(data)
            more = frame.more
            if not more:
                if total > max_bytes:
                    break
                return first, body
            if total > max_bytes or len(body) >= max_frames:
                break
        self._frames, self._bytes = len(body), total
        del body  # what was kept goes now, before the rest is read
        if not more:
            return Oversized(first, self._reason())
        self._first = first
        return self._discard(sock)

    def _discard(self, sock: zmq.Socket[Any]) -> Oversized | None:
        recv = sock.recv
        frames, total = self._frames, self._bytes
        for _ in range(DISCARD_SLICE):
            frame = recv(_DONTWAIT, copy=False)  # libzmq's copy is freed when the Frame is
            frames += 1
            total += len(frame)
            if not frame.more:
                first, self._first = self._first, None
                assert first is not None
                self._frames, self._bytes = frames, total
                return Oversized(first, self._reason())
        self._frames, self._bytes = frames, total
        return None

    def _reason(self) -> str:
        if self._frames > self._max_frames:
            return f"message has {self._frames} frames; the limit is {self._max_frames}"
        return f"message is {self._bytes} bytes; the limit is {self._max_bytes} (max_message_bytes)"


COPY_THRESHOLD = 65536
"""Frames at least this large are handed to libzmq without a copy (big eval results)."""


def new_context() -> zmq.Context[Any]:
    """A ZeroMQ context whose I/O thread does not preempt this process's event loop.

    Each send that wakes libzmq's sleeping I/O thread cost the sender 15 us at the
    median and 44 us on average here: the woken thread often preempts the Python thread
    on its core. Under ``SCHED_BATCH`` (Linux) a waking thread does not preempt; it runs
    on a free core or when the loop next waits. Measured on the benchmark fleet, four
    pairs of runs: serial evals 3-16 % and 32-in-flight throughput 8-21 % faster.

    It also caps the process's malloc arenas at one (:mod:`zmqcross._malloc`) before the
    I/O thread or a relay thread first allocates, so big payloads do not pin memory in
    an arena per thread.
    """
    share_one_arena()
    ctx: zmq.Context[Any] = zmq.Context()
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is not None and hasattr(zmq, "THREAD_SCHED_POLICY"):
        try:
            ctx.set(zmq.THREAD_SCHED_POLICY, batch)  # applies to threads started after this
        except zmq.ZMQError:
            pass  # a libzmq without the option: the default scheduling works, a little slower
    return ctx


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
    there is none); the default returns its frames as a list of bytes. It may return
    ``None`` instead: it did some reading but has no message yet (a
    :class:`RoutedReceiver` discarding a huge one in slices). The pump then goes on,
    within its time budget, and on a later turn, so other work runs in between.
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
        if self._loop is not None and not self._scheduled and has_input(self.sock):
            self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._scheduled = True
        self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        with CORK:
            self._drain_batch()

    def _drain_batch(self) -> None:
        until = time.monotonic() + DRAIN_SECONDS
        sock = self.sock
        for _ in range(DRAIN_BATCH):
            if self._loop is None:
                return
            try:
                # Look first: reading an empty socket raises zmq.Again, which costs four
                # times as much (8.5 against 2 us), and every drain would end with one.
                if not has_input(sock):
                    return
                message = self._receive(sock)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ENOTSOCK or sock.closed:
                    return
                raise
            if message is not None:
                try:
                    self._handle(message)
                except Exception:  # one bad message must not stop the pump
                    log.exception("%s: handler failed on a message", self._name)
            if time.monotonic() > until:
                break
        if self._loop is not None:
            self._schedule()


class Cork:
    """Holds writes back while one batch of input is handled, then flushes each writer once.

    Under load a pump or pipe read hands over many messages at once, and handling them
    writes many small answers. Each write is a syscall that wakes the reader's process
    (measured here: about 25 us per pipe write and per ZeroMQ send, on top of the
    reader's own wake-up), so answers to one batch leave as one write per destination.
    Writes outside a batch (a task sending on its own) go out at once: nothing waits for
    a later loop turn, so a lone eval is not slowed down.
    """

    __slots__ = ("_depth", "_writers")

    def __init__(self) -> None:
        self._depth = 0
        self._writers: list[Callable[[], None]] = []

    @property
    def held(self) -> bool:
        """Whether writes should be queued now (inside a batch)."""
        return self._depth > 0

    def defer(self, flush: Callable[[], None]) -> None:
        """Call ``flush`` when the outermost batch ends (register once per writer and batch)."""
        self._writers.append(flush)

    def __enter__(self) -> Cork:
        self._depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            while self._writers:
                writers, self._writers = self._writers, []
                for flush in writers:
                    try:
                        flush()
                    except Exception:  # one writer's failure must not hold back the others
                        log.exception("flushing held writes failed")


CORK = Cork()
"""The process's cork: every pump and pipe runs on the one event loop of its process."""


class Outbox:
    """Messages for one socket's peers, coalesced into :class:`~zmqcross.protocol.Batch` sends.

    While the :data:`CORK` is held (handling a batch of input) everything is held and
    leaves when it is released. Outside it, the first message to a peer in a loop turn
    goes at once and the ones after it in the same turn (a burst of tasks each sending,
    as under load) are held to the end of the turn. So a lone message is never delayed
    and a burst costs one send per peer. ``send(key, frames)`` does the real sending and
    handles its own errors. Anything else sent to a peer must call :meth:`flush_key`
    first, so that messages keep their order.
    """

    __slots__ = ("_due", "_held", "_recent", "_send")

    def __init__(self, send: Callable[[Any, list[bytes]], object]) -> None:
        self._send = send
        self._held: dict[Any, list[list[bytes]]] = {}
        self._recent: set[Any] = set()  # peers sent to at once in this loop turn
        self._due = False  # a flush is scheduled (end of the turn, or the cork's release)

    def put(self, key: Any, frames: list[bytes]) -> None:
        """Send ``frames`` to ``key`` now, or hold them for the next flush."""
        if not CORK.held and key not in self._recent and key not in self._held:
            self._recent.add(key)
            self._schedule()
            self._send(key, frames)
            return
        held = self._held.get(key)
        if held is None:
            self._held[key] = held = []
        held.append(frames)
        self._schedule()

    def flush_key(self, key: Any) -> None:
        """Send what is held for ``key`` now (before sending it anything else)."""
        held = self._held.pop(key, None)
        if held:
            for frames in batches(held):
                self._send(key, frames)

    def flush(self) -> None:
        """Send everything held, one batch (or a few) per peer."""
        self._due = False
        self._recent.clear()
        held, self._held = self._held, {}
        for key, messages in held.items():
            for frames in batches(messages):
                self._send(key, frames)

    def _schedule(self) -> None:
        if self._due:
            return
        self._due = True
        if CORK.held:
            CORK.defer(self.flush)
        else:
            asyncio.get_running_loop().call_soon(self.flush)


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
        | zmq.EVENT_ACCEPTED
    )
    monitor = sock.get_monitor_socket(events)

    def handle(frames: list[bytes]) -> None:
        parsed = parse_monitor_message(frames)
        raw = parsed["endpoint"]
        endpoint = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        on_event(MonitorEvent(zmq.Event(parsed["event"]), int(parsed["value"]), endpoint))

    return Pump(monitor, handle, name=name)


def closed_error(what: str) -> ConnectionLost:
    """The error for using a bridge or client that is not running."""
    return ConnectionLost(f"{what} is not running (call start()/connect() first, or it was closed)")
