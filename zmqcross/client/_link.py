"""A client's link to the bridge: registering, keeping it alive, noticing it is gone.

Registration is retried with back-off until the bridge answers; a refusal on the first
connect ends ``connect()`` with the bridge's error. Afterwards the link watches for a
silent bridge (heartbeats), a bridge that left or restarted (goodbye, a new epoch in its
beacons, "register again"), and failed security handshakes (a refused CURVE key, or
CURVE on one side only), and registers again or reports the error.

Mixed into :class:`zmqcross.Client`; the sockets and the messages themselves stay in
:mod:`zmqcross.client`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import zmq

from ..errors import AuthenticationError, ConnectionLost, ProtocolError, RequestTimeout, ZmqcrossError
from ..events import EventEmitter
from ..protocol import (
    PROTOCOL_VERSION,
    Beacon,
    ErrorReply,
    Goodbye,
    Hosting,
    Limits,
    Message,
    Ping,
    Register,
    Reregister,
    Welcome,
    decode,
)
from ..transport import MonitorEvent, OpenRequests

__all__ = ["HANDSHAKE_FAILURES", "BridgeLink"]

log = logging.getLogger("zmqcross.client")

HANDSHAKE_FAILURES = 3
"""Consecutive failed handshakes, none succeeding, after which a CURVE mismatch is reported."""

# Link states. "lost" means the bridge went silent or left; "registering" that it asked
# us to register again (it restarted). In both we keep sending registrations.

_IDLE, _REGISTERING, _READY, _LOST, _CLOSED = "idle", "registering", "ready", "lost", "closed"


class BridgeLink:
    """Registration and the link's health; see the module docstring."""

    # Provided by zmqcross.client.Client, which mixes this class in.
    _state: str
    _open: OpenRequests
    _events: EventEmitter
    _limits: Limits
    _endpoint: str
    _auth_token: str
    _machine_id: str
    _agent: str
    _curve: Any
    _initial_data: Any
    _hosting: Hosting | None
    _epoch: str | None
    _permissions: frozenset[str]
    _registrations: int
    _retry_interval: float
    _max_retry_interval: float
    _heartbeat_interval: float
    _heartbeat_timeout: float
    _last_heard: float
    _handshake_failures: int
    _connected: asyncio.Future[None] | None
    _beacon_seen: asyncio.Event | None
    _register_task: asyncio.Task[None] | None

    if TYPE_CHECKING:

        def _send(self, msg: Message) -> None: ...

        def _send_frames(self, frames: list[bytes]) -> None: ...

    async def _register_loop(self) -> None:
        window = self._retry_interval
        while self._state in (_REGISTERING, _LOST):
            request_id = self._open.next_id()
            register = self._register_message(request_id, max(window, 1.0))
            outcome = self._open.future(request_id=request_id, timeout=max(window, 1.0), what="registration")
            try:
                self._send(register)
            except ConnectionLost as exc:
                log.debug("registration not sent: %s", exc.message)
            result = await outcome
            if isinstance(result, Welcome):
                self._welcomed(result)
                return
            if isinstance(result, ErrorReply):
                self._registration_refused(result.error.to_exception())  # closes on a first connect
            elif not isinstance(result, RequestTimeout):
                log.debug("registration attempt ended with %r", result)
            window = min(window * 2, self._max_retry_interval)

    def _register_message(self, request_id: int, lifetime: float) -> Register:
        return Register(
            id=request_id,
            deadline=time.time() + lifetime,
            protocol=PROTOCOL_VERSION,
            token=self._auth_token,
            machine_id=self._machine_id,
            agent=self._agent,
            initial_data=self._initial_data,
            hosting=self._hosting,
        )

    def _registration_refused(self, error: ZmqcrossError) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(error)  # connect() raises it
            self._state = _CLOSED
            return
        log.error("the bridge refused re-registration: %s", error.message)
        self._events.emit("error", error)

    def _welcomed(self, welcome: Welcome) -> None:
        self._state = _READY
        self._registrations += 1
        self._epoch = welcome.epoch
        self._heartbeat_interval = welcome.heartbeat_interval
        self._heartbeat_timeout = welcome.heartbeat_timeout
        self._permissions = frozenset(welcome.permissions)
        self._last_heard = time.monotonic()
        if welcome.notice:
            log.warning("the bridge says: %s", welcome.notice)
        now = time.time()
        for entry in self._open.parked():
            entry.parked = False
            if entry.frames is not None and entry.deadline > now:
                try:
                    self._send_frames(
                        entry.frames
                    )  # the bridge refused it unrun; its deadline allows a retry
                except ConnectionLost:
                    pass
        log.info(
            "registered with the bridge at %s as %r (epoch %s)",
            self._endpoint,
            self._machine_id,
            welcome.epoch,
        )
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(None)
        self._events.emit("ready")

    def _start_registering(self, state: str) -> None:
        self._state = state
        if self._register_task is None or self._register_task.done():
            self._register_task = asyncio.get_running_loop().create_task(self._register_loop())

    def _lost(self, reason: str) -> None:
        if self._state != _READY:
            return
        log.warning("lost the bridge at %s: %s; reconnecting", self._endpoint, reason)
        self._start_registering(_LOST)
        self._events.emit("disconnect", reason)

    def _on_reregister(self, msg: Reregister) -> None:
        if msg.reply_to is not None:
            entry = self._open.get(msg.reply_to)
            if entry is not None:
                entry.parked = True
        if self._state == _READY:
            log.info("the bridge asks this client to register again: %s", msg.reason)
            self._start_registering(_REGISTERING)

    def _on_goodbye(self, msg: Goodbye) -> None:
        if msg.retry:
            self._lost(f"the bridge left: {msg.reason}")
            return
        error = ConnectionLost(f"the bridge dismissed this client: {msg.reason}")
        log.error("%s", error.message)
        self._state = _CLOSED
        self._open.fail_all(error)
        self._events.emit("disconnect", msg.reason)
        self._events.emit("error", error)

    def _on_sub(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames, self._limits)
        except ProtocolError as exc:
            log.warning("bad broadcast from the bridge: %s", exc.message)
            return
        if isinstance(msg, Beacon):
            if self._beacon_seen is not None:
                self._beacon_seen.set()
            if self._state == _READY and msg.epoch != self._epoch:
                log.info("the bridge restarted (epoch %s -> %s); registering again", self._epoch, msg.epoch)
                self._start_registering(_REGISTERING)

    def _on_monitor(self, event: MonitorEvent) -> None:
        if event.event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._handshake_failures = 0
            return
        if event.event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            error: ZmqcrossError = AuthenticationError(
                f"the bridge at {self._endpoint} refused this client's CURVE key (ZAP status {event.value}): "
                "add this client's public key file to the bridge's allow-list"
            )
        elif event.event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            error = AuthenticationError(
                f"security handshake with {self._endpoint} failed: one side uses CURVE and the other does not "
                f"(this client has CURVE {'on' if self._curve else 'off'})"
            )
        elif event.event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            # A CURVE mismatch usually shows up as the bridge dropping the connection
            # mid-handshake (EPIPE), not as a protocol error; a streak of them is the sign.
            self._handshake_failures += 1
            if self._handshake_failures != HANDSHAKE_FAILURES:
                return
            error = AuthenticationError(
                f"the security handshake with {self._endpoint} failed {HANDSHAKE_FAILURES} times in a row: "
                f"the bridge and this client disagree about CURVE (this client has CURVE "
                f"{'on: check that server_key is the bridge public key' if self._curve else 'off'})"
            )
        else:
            return
        if self._connected is not None and not self._connected.done():
            self._registration_refused(error)
        else:
            log.error("%s", error.message)
            self._events.emit("error", error)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            if self._state != _READY:
                continue
            silent = time.monotonic() - self._last_heard
            if silent > self._heartbeat_timeout:
                self._lost(f"no answer from the bridge for {silent:.1f} s")
                continue
            try:
                self._send(Ping(sent_at=time.time()))
            except ConnectionLost as exc:
                self._lost(exc.message)
