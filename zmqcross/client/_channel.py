"""A client's sockets: the one I/O boundary of a :class:`~zmqcross.Client`.

A DEALER to the bridge's ROUTER (requests, answers, registration), a SUB to its PUB
(beacons), and the DEALER's monitor (security handshakes). The channel only moves bytes:
what arrives goes to the callbacks given to :meth:`Channel.open`, and what the link, the
relay and the client send leaves through :meth:`Channel.send`, :meth:`Channel.send_frames`
and :meth:`Channel.answer`.

The DEALER is read on the process's relay core (:mod:`zmqcross.relay`), not on the event
loop: a machine relays evals to its clusters from there without waking the loop. So
``on_dealer`` runs on the core's thread; the client hands the loop what is its to handle.
Sends from the loop go straight out, under the socket's lock (:class:`~zmqcross.relay.SocketLink`);
:meth:`Channel.post` is the core's own way out, batched at the end of its round.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

import zmq

from .._transport import (
    MonitorEvent,
    Outbox,
    Pump,
    closed_error,
    configure_socket,
    new_context,
    watch_monitor,
)
from ..errors import ConnectionLost, ZmqcrossError
from ..protocol import Limits, Message, answer_frames, check_limits, encode, fit_answer
from ..relay import SocketLink, shared_core
from ..security import CurveClient

__all__ = ["Channel"]

log = logging.getLogger("zmqcross.client")


class Channel:
    """The DEALER, SUB and monitor sockets to one bridge, and the outbox of held answers."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        pub_port: int,
        machine_id: str,
        curve: CurveClient | None,
        limits: Limits,
    ) -> None:
        where = f"[{host}]" if ":" in host else host
        self.endpoint = f"tcp://{where}:{port}"
        """The bridge's ROUTER, as this client connects to it."""
        self.pub_endpoint = f"tcp://{where}:{pub_port}"
        """The bridge's PUB, as this client subscribes to it."""
        self._ipv6 = ":" in host
        self._machine_id = machine_id
        self._curve = curve
        self._limits = limits
        self._ctx: zmq.Context[Any] | None = None
        self._dealer: SocketLink | None = None
        self._sockets: list[zmq.Socket[Any]] = []
        self._pumps: list[Pump] = []
        self._outbox = Outbox(self._send_held)  # answers to the bridge, batched under load

    @property
    def opened(self) -> bool:
        """Whether the sockets are open (between :meth:`open` and :meth:`close`)."""
        return self._ctx is not None

    def open(
        self,
        *,
        on_dealer: Callable[[list[bytes]], None],
        on_sub: Callable[[list[bytes]], None],
        on_monitor: Callable[[MonitorEvent], None],
    ) -> None:
        """Open and connect the sockets; what arrives on each goes to its callback
        (``on_dealer`` on the relay core's thread, the others on the event loop)."""
        ctx = new_context()
        self._ctx = ctx
        dealer = ctx.socket(zmq.DEALER)
        sub = ctx.socket(zmq.SUB)
        self._sockets += [dealer, sub]
        # A routing id unique to this process: a new process never inherits the old
        # one's half-closed connection, and the bridge pins it to our key on register.
        dealer.setsockopt(zmq.ROUTING_ID, f"{self._machine_id}/{secrets.token_hex(4)}".encode())
        for sock in (dealer, sub):
            configure_socket(sock, self._limits, curve_client=self._curve)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            if self._ipv6:
                sock.setsockopt(zmq.IPV6, 1)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        monitor = watch_monitor(dealer, on_monitor, name="dealer-monitor")
        self._sockets.append(monitor.sock)
        self._pumps += [Pump(sub, on_sub, name="sub"), monitor]
        for pump in self._pumps:
            pump.start()
        dealer.connect(self.endpoint)
        sub.connect(self.pub_endpoint)
        core = shared_core()
        self._dealer = SocketLink(core, dealer, on_dealer)
        self._dealer.on_send_error = lambda reason: log.warning("could not answer the bridge: %s", reason)
        core.submit(self._dealer.attach)

    async def close(self) -> None:
        """Stop the pumps and close the sockets, letting a last goodbye leave."""
        for pump in self._pumps:
            pump.stop()
        link, self._dealer = self._dealer, None
        if link is not None:  # the core lets go of the DEALER before it is closed here
            detached = threading.Event()

            def let_go() -> None:
                link.detach()
                detached.set()

            link.core.submit(let_go)
            await asyncio.to_thread(detached.wait, 5.0)
        for sock in self._sockets:
            sock.close(linger=200 if link is not None and sock is link.sock else 0)  # let the goodbye leave
        self._sockets.clear()
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            await asyncio.to_thread(ctx.term)

    # ------------------------------------------------------------------ sending

    def send(self, msg: Message) -> None:
        """Encode and send one message now; raises :class:`ConnectionLost` if the queue is full."""
        frames = encode(msg)
        check_limits(frames, self._limits)
        self.send_frames(frames)

    def send_frames(self, frames: list[bytes]) -> None:
        """Send an encoded message now, after any held answers (messages keep their order)."""
        self._outbox.flush_key(None)
        self._send_now(frames)

    def answer(self, msg: Message) -> None:
        """Queue an answer to the bridge; under load answers leave together in a batch."""
        try:
            frames = answer_frames(msg, self._limits)
        except ZmqcrossError as exc:
            log.warning("could not answer the bridge: %s", exc.message)
            return
        self._outbox.put(None, frames)

    def post(self, frames: list[bytes], reply_to: int) -> None:
        """An encoded answer to ``reply_to`` from the relay core's thread: leaves at the end of
        the core's round, batched. One over the limits is replaced by the error saying so."""
        dealer = self._dealer
        if dealer is None:
            return
        try:
            dealer.post(fit_answer(frames, reply_to, self._limits))
        except ZmqcrossError as exc:
            log.warning("could not answer the bridge: %s", exc.message)

    def _send_held(self, key: None, frames: list[bytes]) -> None:
        try:
            self._send_now(frames)
        except ZmqcrossError as exc:
            log.warning("could not answer the bridge: %s", exc.message)

    def _send_now(self, frames: list[bytes]) -> None:
        dealer = self._dealer
        if dealer is None:
            raise closed_error("the client")
        try:
            dealer.send(frames)
        except zmq.Again:
            raise ConnectionLost(
                f"the queue to the bridge at {self.endpoint} is full: the bridge is unreachable or not reading"
            ) from None
