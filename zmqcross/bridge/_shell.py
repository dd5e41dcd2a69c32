"""The bridge's I/O shell: its ZeroMQ context, sockets, pumps and heartbeat timer.

It moves bytes and calls the core (:class:`._core.BridgeCore`): every ROUTER message to
:meth:`~._core.BridgeCore.receive`, every heartbeat interval to
:meth:`~._core.BridgeCore.tick`, a closed connection to
:meth:`~._core.BridgeCore.connection_closed`. It is the core's :class:`._outgoing.Outgoing`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import zmq

from .._transport import (
    Outbox,
    Oversized,
    Pump,
    RoutedReceiver,
    closed_error,
    configure_socket,
    new_context,
    send_frames,
    watch_monitor,
)
from ..errors import ConfigurationError
from ..protocol import Limits, Message, Ping, answer_frames, encode
from ..security import CurveServer, ZapHandler
from ._core import BridgeCore
from ._idle import UNREGISTERED_GRACE, IdleConnections
from ._outgoing import BridgeCounters
from ._window import SendWindow

__all__ = ["BridgeShell", "endpoint"]

log = logging.getLogger("zmqcross.bridge")

_SRCFD = int(zmq.SRCFD)  # a message's property: the descriptor of the connection it came on


def endpoint(host: str, port: int) -> str:
    """The ZeroMQ address of ``host:port`` (``*`` for port 0, brackets for IPv6)."""
    where = f"[{host}]" if ":" in host else host
    return f"tcp://{where}:{port if port else '*'}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only."""
    return host in ("localhost", "::1") or host.startswith("127.")


class FrameOrigin:
    """What libzmq knows of the connection a routing frame came on."""

    __slots__ = ("_curve", "_frame", "_user_id")

    def __init__(self, frame: zmq.Frame, curve: bool) -> None:
        self._frame = frame
        self._curve = curve
        self._user_id: str | None = None

    def user_id(self) -> str | None:
        # Read once per socket message: every message of a batch asks (a libzmq call each).
        if self._curve and self._user_id is None:
            self._user_id = str(self._frame.get("User-Id"))
        return self._user_id

    def address(self) -> str | None:
        try:
            return str(self._frame.get("Peer-Address"))
        except zmq.ZMQError:
            return None


class BridgeShell:
    """Sockets, pumps and timers for one bridge run; sends what its core decides."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        pub_port: int,
        curve: CurveServer | None,
        limits: Limits,
        counters: BridgeCounters,
        window: SendWindow,
        heartbeat_interval: float,
    ) -> None:
        self.host = host
        self.port = port
        self.pub_port = pub_port
        self._curve = curve
        self._limits = limits
        self._counters = counters
        self._window = window
        self._heartbeat_interval = heartbeat_interval
        self._core: BridgeCore | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._pub: zmq.Socket[Any] | None = None
        self._router_pump: Pump | None = None
        self._pumps: list[Pump] = []
        self._sockets: list[zmq.Socket[Any]] = []
        self._zap: ZapHandler | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._receiver: RoutedReceiver | None = None
        self._idle = IdleConnections()
        self._outbox = Outbox(self.send_now)  # answers and fan-outs, batched per peer under load

    @property
    def running(self) -> bool:
        """Whether the sockets are open."""
        return self._ctx is not None and self._router is not None

    @property
    def refused_keys(self) -> int:
        """CURVE keys ZAP turned away."""
        return self._zap.denied if self._zap is not None else 0

    def require_running(self) -> None:
        """Raise ConnectionLost unless the sockets are open."""
        if not self.running:
            raise closed_error("the bridge")

    # ------------------------------------------------------------------ lifetime

    def start(self, core: BridgeCore) -> None:
        """Bind both sockets and start pumping into ``core``."""
        if self._ctx is not None:
            raise RuntimeError("this bridge is already started")
        self._core = core
        self._ctx = new_context()
        try:
            self._bind(self._ctx, core)
        except BaseException:
            self.close_sockets()
            raise
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat(core))

    def _bind(self, ctx: zmq.Context[Any], core: BridgeCore) -> None:
        if self._curve is not None:
            # Must exist before any CURVE socket binds: libzmq admits every key without it.
            zap_socket = self._socket(ctx, zmq.REP)
            zap_socket.bind("inproc://zeromq.zap.01")
            self._zap = ZapHandler(self._curve.allowed, reload=self._curve.reload)
            zap = self._zap

            def answer_zap(frames: list[bytes]) -> None:
                zap_socket.send_multipart(zap.handle(frames))

            self._pump(zap_socket, answer_zap, name="zap")
        elif not is_loopback(self.host):
            log.warning(
                "!!! The bridge listens on %s WITHOUT CURVE: anyone who can reach it and learns the auth "
                "token can run code on every cluster. Configure curve=CurveServer.from_files(...). !!!",
                self.host,
            )
        router = self._socket(ctx, zmq.ROUTER)
        configure_socket(router, self._limits, curve_server=self._curve)
        # Without ROUTER_MANDATORY a send to a vanished peer is dropped silently; with it
        # the send fails and the peer is known to be gone at once.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        pub = self._socket(ctx, zmq.PUB)
        configure_socket(pub, self._limits, curve_server=self._curve)
        for sock in (router, pub):
            if ":" in self.host:
                sock.setsockopt(zmq.IPV6, 1)
        try:
            router.bind(endpoint(self.host, self.port))
            pub.bind(endpoint(self.host, self.pub_port))
        except zmq.ZMQError as exc:
            raise ConfigurationError(
                f"cannot listen on {self.host} ports {self.port}/{self.pub_port}: {exc.strerror}"
            ) from None
        self._router, self._pub = router, pub
        self.port = _bound_port(router)
        self.pub_port = _bound_port(pub)
        curve = self._curve is not None
        receive = core.receive
        idle, registry = self._idle, core.fleet.registry

        def on_router(routed: tuple[zmq.Frame, list[bytes]] | Oversized) -> None:
            if isinstance(routed, Oversized):  # read to its end and dropped: only the answer is left
                core.oversized(routed.first.bytes, FrameOrigin(routed.first, curve), routed.reason)
                return
            first, body = routed
            route = first.bytes
            receive(route, FrameOrigin(first, curve), body)
            if idle and registry.get(route) is not None:  # only while a new connection waits
                idle.heard(first.get(_SRCFD))

        # Frame count and total size are checked while a message is read, not after:
        # one over them is dropped as it arrives, in slices between which the loop runs.
        receiver = RoutedReceiver(self._limits)
        self._receiver = receiver
        self._router_pump = self._pump(router, on_router, name="router", receive=receiver)
        monitor = watch_monitor(router, self._on_monitor, name="router-monitor")
        self._sockets.append(monitor.sock)
        monitor.start()
        self._pumps.append(monitor)

    def _socket(self, ctx: zmq.Context[Any], kind: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = ctx.socket(kind)
        self._sockets.append(sock)
        return sock

    def _pump(self, sock: zmq.Socket[Any], handle: Callable[[Any], None], **kwargs: Any) -> Pump:
        pump = Pump(sock, handle, **kwargs)
        pump.start()
        self._pumps.append(pump)
        return pump

    async def close(self) -> None:
        """Stop the heartbeat, flush what is held, close the sockets (goodbyes get 200 ms to leave)."""
        ctx = self._ctx
        if ctx is None:
            return
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        self._ctx = None
        self.close_sockets(linger_ms=200)
        await asyncio.to_thread(ctx.term)  # waits out the goodbyes' linger without blocking the loop

    def close_sockets(self, linger_ms: int = 0) -> None:
        """Flush held messages and close every socket now."""
        self._outbox.flush()  # held messages (the goodbyes among them) leave before the sockets close
        for pump in self._pumps:
            pump.stop()
        self._pumps.clear()
        for sock in self._sockets:
            sock.close(linger=linger_ms if sock is self._router else 0)
        self._sockets.clear()
        self._router = self._pub = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def _heartbeat(self, core: BridgeCore) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                receiver = self._receiver
                core.tick(hearing=receiver is None or not receiver.discarding)
                self._refresh_keys(core)
                self._close_idle()
            except Exception:  # the heartbeat must outlive any one bad tick
                log.exception("bridge heartbeat tick failed")

    def _close_idle(self) -> None:
        grace = max(UNREGISTERED_GRACE, 2 * self._heartbeat_interval)
        for fd in self._idle.expired(time.monotonic(), grace):
            shut_down_connection(fd, self.port)

    def _refresh_keys(self, core: BridgeCore) -> None:
        # A key deleted from the allow-list folder is refused by ZAP and loses its live
        # sessions within one heartbeat interval (a stat of the folder when nothing changed).
        curve = self._curve
        if curve is None or curve.allow_dir is None:
            return
        before = curve.allowed
        if curve.reload() is before:
            return
        if self._zap is not None:
            self._zap.refresh()
        core.recheck_keys()

    def _on_monitor(self, event: Any) -> None:
        if event.event == zmq.EVENT_ACCEPTED:
            self._idle.accepted(int(event.value), time.monotonic())
        elif event.event == zmq.EVENT_DISCONNECTED:
            self._idle.closed(int(event.value))
            if self._core is not None:
                self._core.connection_closed()
        elif event.event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            log.warning(
                "a peer failed the ZMTP handshake (a client without CURVE, or with a wrong server key?)"
            )
        elif event.event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            log.warning(
                "a peer's handshake failed (errno %d): often a CURVE client with a wrong server key",
                event.value,
            )

    # ------------------------------------------------------------------ Outgoing

    def send(self, route: bytes, msg: Message) -> None:
        """Send ``msg`` now, or batched with the others for that peer at the end of this burst."""
        self.queue(route, answer_frames(msg, self._limits))

    def queue(self, route: bytes, frames: list[bytes]) -> None:
        """Send encoded frames now, or batched with the others for that peer at the end of this burst."""
        self._counters.messages_out += 1
        self._outbox.put(route, frames)

    def send_direct(self, route: bytes, frames: list[bytes]) -> bool:
        """Send at once (after what is held for that peer); False if it could not be sent."""
        self._outbox.flush_key(route)
        self._counters.messages_out += 1
        return self.send_now(route, frames)

    def send_now(self, route: bytes, frames: list[bytes]) -> bool:
        """Write ``frames`` to ``route`` on the ROUTER; False if they could not be."""
        window = self._window
        if not window.may_send(route, time.monotonic()):
            self._counters.unread_drops += 1
            log.warning(
                "dropped a message to %r: it has %d bytes it has not shown it read (MAX_UNREAD_BYTES)",
                self._name(route),
                window.unread(route),
            )
            return False
        if not self._write(route, frames):
            return False
        nonce = window.sent(route, sum(map(len, frames)))
        if nonce is not None:
            self.probe(route, nonce)
        return True

    def probe(self, route: bytes, nonce: float) -> None:
        """Ask ``route`` to prove it read what it was sent: a Ping whose Pong echoes ``nonce``."""
        frames = encode(Ping(sent_at=nonce))
        if self._write(route, frames):
            self._window.sent(route, sum(map(len, frames)))

    def _name(self, route: bytes) -> object:
        peer = self._core.fleet.registry.get(route) if self._core is not None else None
        return peer.info.id if peer is not None else route

    def _write(self, route: bytes, frames: list[bytes]) -> bool:
        router = self._router
        if router is None or router.closed:
            return False
        self._counters.sends += 1
        try:
            send_frames(router, [route, *frames])
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                if self._core is not None:
                    self._core.unreachable(route)
                return False
            if exc.errno == zmq.EAGAIN:
                peer = self._core.fleet.registry.get(route) if self._core is not None else None
                log.warning(
                    "send queue to %r is full; a message was dropped", peer.info.id if peer else route
                )
                return False
            raise
        finally:
            if self._router_pump is not None:
                self._router_pump.kick()
        return True

    def reachable(self, route: bytes) -> bool:
        """Probe ``route`` now: with ROUTER_MANDATORY a send to a vanished peer fails at once."""
        if self._core is None:
            return False
        return self.send_direct(route, encode(self._core.beacon()))

    def publish(self, msg: Message) -> None:
        """Publish ``msg`` on the PUB socket; a full queue drops it (beacons repeat)."""
        pub = self._pub
        if pub is None or pub.closed:
            return
        try:
            send_frames(pub, encode(msg))
        except zmq.Again:
            pass


def shut_down_connection(fd: int, port: int) -> None:
    """End the TCP connection behind libzmq's ``fd``, if it is still one accepted on ``port``.

    libzmq owns the descriptor, so it is not closed here: a shutdown of a duplicate ends
    the connection, libzmq sees it end and cleans up. The port check guards against a
    descriptor number that was closed and reused for something else meanwhile.
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        if sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != port:
            return
        log.warning(
            "closed a connection from %s that did not register within the grace period", sock.getpeername()[0]
        )
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _bound_port(sock: zmq.Socket[Any]) -> int:
    return int(cast(bytes, sock.getsockopt(zmq.LAST_ENDPOINT)).decode().rsplit(":", 1)[1])
