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

from .errors import ConnectionLost
from .protocol import Limits, batches
from .security import ZAP_DOMAIN, CurveClient, CurveServer

__all__ = [
    "CORK",
    "DRAIN_BATCH",
    "DRAIN_SECONDS",
    "HIGH_WATER_MARK",
    "Cork",
    "MonitorEvent",
    "Outbox",
    "Pump",
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


def new_context() -> zmq.Context[Any]:
    """A ZeroMQ context whose I/O thread does not preempt this process's event loop.

    Each send that wakes libzmq's sleeping I/O thread cost the sender 15 us at the
    median and 44 us on average here: the woken thread often preempts the Python thread
    on its core. Under ``SCHED_BATCH`` (Linux) a waking thread does not preempt; it runs
    on a free core or when the loop next waits. Measured on the benchmark fleet, four
    pairs of runs: serial evals 3-16 % and 32-in-flight throughput 8-21 % faster.
    """
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
        with CORK:
            self._drain_batch()

    def _drain_batch(self) -> None:
        until = time.monotonic() + DRAIN_SECONDS
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
