"""The bridge's receiving side: every message from the ROUTER, checked, then handed on.

Each message is decoded (a batch is opened, one level deep), counted, and checked
before anything runs: a malformed one is answered with the ProtocolError that says what
is wrong, a stranger's goes to registration, one whose CURVE key is not the key its
routing id registered with is dropped, and an action the peer's permissions do not
include is refused with PermissionDenied. Answers find their request, or their eval
fan-out. Connection events from the ROUTER's monitor trigger a probe for the peer that left.

Mixed into :class:`zmqcross.Bridge`; the sockets stay in :mod:`zmqcross.bridge`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from .bridge_fleet import _peer_address, _user_id
from .bridge_parts import BridgeParts
from .errors import PermissionDenied, ProtocolError
from .messages import IncomingMessage
from .protocol import (
    Batch,
    ErrorInfo,
    ErrorReply,
    EvalReply,
    Goodbye,
    Message,
    Ping,
    Pong,
    Reply,
    Send,
    decode,
)
from .registry import Peer
from .transport import MonitorEvent, receive_frames

__all__ = ["PROBE_DELAYS", "Inbox", "receive_routed"]

log = logging.getLogger("zmqcross.bridge")

PROBE_DELAYS = (0.05, 0.3)
"""Seconds after a connection drops at which the bridge probes its peers to find which one left."""


class Inbox(BridgeParts):
    """Receiving for :class:`zmqcross.Bridge`; see the module docstring."""

    _dispatch: dict[type, Callable[[Peer, Any], None]]

    if TYPE_CHECKING:

        def _from_stranger(self, routing_id: bytes, frame: zmq.Frame, msg: Message) -> None: ...

        def _probe_peers(self) -> None: ...

    def _on_router(self, routed: tuple[zmq.Frame, list[bytes]]) -> None:
        first, body = routed
        self._on_routed(first, first.bytes, body, nested=False)

    def _on_routed(self, first: zmq.Frame, routing_id: bytes, body: list[bytes], *, nested: bool) -> None:
        try:
            msg = decode(body, self._limits)
            if type(msg) is Batch:
                if nested:
                    raise ProtocolError("a batch inside a batch")
                for inner in msg.messages():
                    self._on_routed(first, routing_id, inner, nested=True)
                return
        except ProtocolError as exc:
            self._counters["in"] += 1
            self._counters["protocol_errors"] += 1
            peer = self._registry.get(routing_id)
            who = repr(peer.info.id) if peer else f"an unregistered peer at {_peer_address(first)}"
            log.warning("bad message from %s: %s", who, exc.message)
            self._send(
                routing_id,
                ErrorReply(
                    reply_to=exc.request_id, error=ErrorInfo.from_exception(exc, with_traceback=False)
                ),
            )
            return
        self._counters["in"] += 1
        peer = self._registry.get(routing_id)
        if peer is None:
            self._from_stranger(routing_id, first, msg)
            return
        if self._curve is not None and _user_id(first) != peer.user_id:
            # Any allow-listed key can claim any routing id; the registration pinned this one to a key.
            log.warning(
                "dropped a message claiming client %r's routing id from another CURVE key", peer.info.id
            )
            return
        peer.last_seen = time.monotonic()
        handler = self._dispatch.get(type(msg))
        if handler is None:
            error = ProtocolError(f"the bridge does not accept {msg.type!r} messages")
            self._send(
                routing_id,
                ErrorReply(
                    reply_to=getattr(msg, "id", None),
                    error=ErrorInfo.from_exception(error, with_traceback=False),
                ),
            )
            return
        handler(peer, msg)

    def _on_ping(self, peer: Peer, msg: Ping) -> None:
        self._send(peer.routing_id, Pong(sent_at=msg.sent_at))

    def _on_goodbye(self, peer: Peer, msg: Goodbye) -> None:
        self._drop(peer, f"left: {msg.reason}")

    def _allowed(self, peer: Peer, action: str, request_id: int | None) -> bool:
        if action in peer.info.permissions:
            return True
        error = PermissionDenied(
            f"client {peer.info.id!r} (agent {peer.info.agent!r}, key {peer.info.key!r}) may not {action}; "
            f"it may: {', '.join(sorted(peer.info.permissions)) or 'nothing'}"
        )
        log.warning("%s", error.message)
        if self._observer is not None:
            self._observer(action, error.code, 0.0)
        self._send(
            peer.routing_id,
            ErrorReply(reply_to=request_id, error=ErrorInfo.from_exception(error, with_traceback=False)),
        )
        return False

    def _on_send(self, peer: Peer, msg: Send) -> None:
        if self._allowed(peer, "request", None):
            self._events.emit("client_message", IncomingMessage(msg.data, client=peer.info), peer.info)

    def _on_answer(self, peer: Peer, msg: Reply | ErrorReply | EvalReply) -> None:
        entry = self._open.get(msg.reply_to) if msg.reply_to is not None else None
        if (
            entry is None
            and msg.reply_to is not None
            and self._fanouts.absorb(msg.reply_to, peer.routing_id, msg)
        ):
            return
        if entry is None or entry.peer != peer.routing_id:
            if isinstance(msg, ErrorReply) and msg.reply_to is None:
                log.warning(
                    "client %r reports a bad message from the bridge: %s", peer.info.id, msg.error.message
                )
            else:
                log.debug("ignored a late or unknown answer from %r", peer.info.id)
            return
        self._open.finish(msg.reply_to, msg)

    def _on_monitor(self, event: MonitorEvent) -> None:
        if event.event == zmq.EVENT_DISCONNECTED:
            loop = asyncio.get_running_loop()
            for delay in PROBE_DELAYS:  # libzmq retires the pipe shortly after the event
                loop.call_later(delay, self._probe_peers)
            return
        if event.event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            log.warning(
                "a peer failed the ZMTP handshake (a client without CURVE, or with a wrong server key?)"
            )
        elif event.event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            log.warning(
                "a peer's handshake failed (errno %d): often a CURVE client with a wrong server key",
                event.value,
            )


_DONTWAIT = int(zmq.DONTWAIT)


def receive_routed(sock: zmq.Socket[Any]) -> tuple[zmq.Frame, list[bytes]]:
    """One message from a ROUTER: its routing frame, and the frames after it."""
    # The routing frame is kept as a zmq.Frame: its User-Id (the CURVE key ZAP admitted)
    # and Peer-Address properties are read from it. The rest of a multipart message is
    # already here once its first part is, so NOBLOCK cannot split it.
    first = sock.recv(_DONTWAIT, copy=False)
    body = receive_frames(sock) if first.more else []
    return first, body
