"""A client's link to the bridge: registering, keeping it alive, noticing it is gone.

Registration is retried with back-off until the bridge answers; a refusal on the first
connect ends ``connect()`` with the bridge's error. Afterwards the link watches for a
silent bridge (heartbeats), a bridge that left or restarted (goodbye, a new epoch in its
beacons, "register again"), and failed security handshakes (a refused CURVE key, or
CURVE on one side only), and registers again or reports the error.

The link's states and every move between them are in :data:`LINK_TRANSITIONS`; the link
changes state only through :meth:`Link.move`. It sends through the client's
:class:`~zmqcross.client._channel.Channel` and owns no sockets.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any

import zmq

from .._events import EventEmitter
from .._requests import OpenRequests
from .._transitions import Transitions
from .._transport import MonitorEvent
from ..errors import AuthenticationError, ConnectionLost, ProtocolError, RequestTimeout, ZmqcrossError
from ..protocol import (
    PROTOCOL_VERSION,
    Beacon,
    ErrorReply,
    Goodbye,
    Hosting,
    Limits,
    Ping,
    Pong,
    Register,
    Reregister,
    Welcome,
    decode,
)
from ._channel import Channel

__all__ = ["HANDSHAKE_FAILURES", "LINK_TRANSITIONS", "Link", "LinkState"]

log = logging.getLogger("zmqcross.client")

HANDSHAKE_FAILURES = 3
"""Consecutive failed handshakes, none succeeding, after which a CURVE mismatch is reported."""


class LinkState(enum.Enum):
    """Where a client's link to the bridge is; the values are what statistics and errors show."""

    IDLE = "idle"
    """Created, not connected yet."""
    REGISTERING = "registering"
    """Sending registrations: connecting, or the bridge restarted and asked us to register again."""
    READY = "ready"
    """Registered: the bridge knows this client."""
    LOST = "lost"
    """The bridge went silent or left; sending registrations until it answers again."""
    CLOSED = "closed"
    """Closed by the user, refused on the first connect, or dismissed by the bridge. Final."""


LINK_TRANSITIONS = Transitions(
    "the link to the bridge",
    {
        LinkState.IDLE: {LinkState.REGISTERING, LinkState.CLOSED},
        # A refusal of the first registration (wrong token, refused key) closes the client.
        LinkState.REGISTERING: {LinkState.READY, LinkState.CLOSED},
        LinkState.READY: {LinkState.LOST, LinkState.REGISTERING, LinkState.CLOSED},
        LinkState.LOST: {LinkState.READY, LinkState.CLOSED},
        LinkState.CLOSED: set(),
    },
)
"""Every move the link may make; :meth:`Link.move` raises :class:`IllegalTransition` for any other."""

# Looking a member up on its Enum class costs ~150 ns on Python 3.11, a module global
# ~10 ns; ``connected`` is asked for every message a bot sends up.
_READY = LinkState.READY


class Link:
    """Registration and the link's health; see the module docstring.

    ``open_requests`` are the client's requests (registrations are requests too, and a
    request the bridge refused unrun is sent again after the next registration);
    ``events`` receives ``ready``, ``disconnect`` and ``error``.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        open_requests: OpenRequests,
        events: EventEmitter,
        limits: Limits,
        auth_token: str,
        machine_id: str,
        agent: str,
        curve: bool,
        retry_interval: float,
        max_retry_interval: float,
    ) -> None:
        self._channel = channel
        self._open = open_requests
        self._events = events
        self._limits = limits
        self._auth_token = auth_token
        self._machine_id = machine_id
        self._agent = agent
        self._curve = curve
        self._retry_interval = retry_interval
        self._max_retry_interval = max_retry_interval
        self._state = LinkState.IDLE
        self._initial_data: Any = None
        self.hosting: Hosting | None = None
        self.lease_until: float | None = None
        """Until when (monotonic) this machine may run clusters, as the bridge's answers grant it;
        None until the first grant."""
        """What this machine runs, told to the bridge on every registration (set by the client)."""
        self.last_heard = 0.0
        """Monotonic time anything last arrived from the bridge; the client's receiver sets it."""
        self.epoch: str | None = None
        """The bridge's epoch at the last registration."""
        self.permissions: frozenset[str] = frozenset()
        """What the bridge allows this client to do (from the last registration)."""
        self.registrations = 0
        """Registrations the bridge accepted."""
        self.round_trip: float | None = None
        """Seconds the last heartbeat took there and back."""
        self._heartbeat_interval = 1.0
        self._heartbeat_timeout = 4.0
        self._handshake_failures = 0
        self._connected: asyncio.Future[None] | None = None
        self._beacon_seen: asyncio.Event | None = None
        self._register_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> LinkState:
        """The link's current state."""
        return self._state

    @property
    def connected(self) -> bool:
        """Whether the bridge currently has this client registered."""
        return self._state is _READY

    def move(self, new: LinkState) -> None:
        """Change state; raises :class:`IllegalTransition` for a move the table does not allow."""
        LINK_TRANSITIONS.check(self._state, new)
        self._state = new

    # ------------------------------------------------------------------ lifetime

    def start(self, initial_data: Any) -> asyncio.Future[None]:
        """Start registering; the future is done when the bridge first accepts (or refuses) us."""
        self._initial_data = initial_data
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        self._beacon_seen = asyncio.Event()
        self.move(LinkState.REGISTERING)
        self._register_task = loop.create_task(self._register_loop())
        return self._connected

    def start_heartbeats(self) -> asyncio.Task[None]:
        """Ping the bridge every heartbeat interval and notice when it goes silent.

        The caller owns the task and cancels it when the client closes.
        """
        return asyncio.get_running_loop().create_task(self._heartbeat())

    async def wait_beacon(self) -> bool:
        """Wait up to one and a half beacon intervals for the first beacon; whether it came.

        PUB/SUB joins late: a client that saw one beacon notices the bridge's next
        restart through the beacon's epoch.
        """
        assert self._beacon_seen is not None, "start() comes first"
        try:
            await asyncio.wait_for(self._beacon_seen.wait(), self._heartbeat_interval * 1.5)
        except TimeoutError:
            return False
        return True

    def close(self) -> asyncio.Task[None] | None:
        """Move to closed (if not closed already); the registration task, if any, to cancel and await."""
        if self._state is not LinkState.CLOSED:
            self.move(LinkState.CLOSED)
        return self._register_task

    def abandon_connect(self) -> None:
        """Fail a ``connect()`` still waiting for its first registration (the client was closed)."""
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(ConnectionLost("the client was closed while connecting"))
            self._connected.exception()  # retrieved: nobody else may be waiting

    # ------------------------------------------------------------------ registering

    def register_message(self, request_id: int, lifetime: float) -> Register:
        """A registration telling the bridge who we are and what we run."""
        return Register(
            id=request_id,
            deadline=time.time() + lifetime,
            protocol=PROTOCOL_VERSION,
            token=self._auth_token,
            machine_id=self._machine_id,
            agent=self._agent,
            initial_data=self._initial_data,
            hosting=self.hosting,
        )

    async def _register_loop(self) -> None:
        window = self._retry_interval
        while self._state in (LinkState.REGISTERING, LinkState.LOST):
            request_id = self._open.next_id()
            register = self.register_message(request_id, max(window, 1.0))
            outcome = self._open.future(request_id=request_id, timeout=max(window, 1.0), what="registration")
            asked = time.monotonic()
            try:
                self._channel.send(register)
            except ConnectionLost as exc:
                log.debug("registration not sent: %s", exc.message)
            result = await outcome
            if self._state not in (LinkState.REGISTERING, LinkState.LOST):
                return  # refused, dismissed or closed while we waited
            if isinstance(result, Welcome):
                self._welcomed(result, asked=asked)
                return
            if isinstance(result, ErrorReply):
                self._registration_refused(result.error.to_exception())  # closes on a first connect
            elif not isinstance(result, RequestTimeout):
                log.debug("registration attempt ended with %r", result)
            window = min(window * 2, self._max_retry_interval)

    def _registration_refused(self, error: ZmqcrossError) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(error)  # connect() raises it
            self.close()  # (a handshake failure may arrive while the client is closing)
            return
        log.error("the bridge refused re-registration: %s", error.message)
        self._events.emit("error", error)

    def _welcomed(self, welcome: Welcome, *, asked: float) -> None:
        if not welcome.refused_claim:  # a refused claim leaves nothing to run under a lease
            self._renew(asked, welcome.lease)
        self.move(LinkState.READY)
        self.registrations += 1
        self.epoch = welcome.epoch
        self._heartbeat_interval = welcome.heartbeat_interval
        self._heartbeat_timeout = welcome.heartbeat_timeout
        self.permissions = frozenset(welcome.permissions)
        self.last_heard = time.monotonic()
        if welcome.notice:
            log.warning("the bridge says: %s", welcome.notice)
        if welcome.refused_claim:
            self._events.emit("claim_refused", welcome.notice or "claim refused")
        now = time.time()
        for entry in self._open.parked():
            entry.parked = False
            if entry.frames is not None and entry.deadline > now:
                try:
                    # The bridge refused it unrun; its deadline allows a retry.
                    self._channel.send_frames(entry.frames)
                except ConnectionLost:
                    pass
        log.info(
            "registered with the bridge at %s as %r (epoch %s)",
            self._channel.endpoint,
            self._machine_id,
            welcome.epoch,
        )
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(None)
        self._events.emit("ready")

    def _start_registering(self, state: LinkState) -> None:
        self.move(state)
        if self._register_task is None or self._register_task.done():
            self._register_task = asyncio.get_running_loop().create_task(self._register_loop())

    def _lost(self, reason: str) -> None:
        if self._state is not LinkState.READY:
            return
        log.warning("lost the bridge at %s: %s; reconnecting", self._channel.endpoint, reason)
        self._start_registering(LinkState.LOST)
        self._events.emit("disconnect", reason)

    # ------------------------------------------------------------------ what the bridge says

    def on_pong(self, msg: Pong) -> None:
        """A heartbeat came back (renewing the lease, counted from when the ping left)."""
        self.round_trip = max(time.time() - msg.sent_at, 0.0)
        if msg.mono is not None:
            self._renew(msg.mono, msg.lease)

    def _renew(self, asked: float, lease: float | None) -> None:
        # From when we asked, not when the answer came: the bridge counts from no earlier.
        if lease is not None and lease > 0 and asked <= time.monotonic():
            self.lease_until = max(self.lease_until or 0.0, asked + lease)

    def on_reregister(self, msg: Reregister) -> None:
        """The bridge does not know us (it restarted): park the refused request, register again."""
        if msg.reply_to is not None:
            entry = self._open.get(msg.reply_to)
            if entry is not None:
                entry.parked = True
        if self._state is LinkState.READY:
            log.info("the bridge asks this client to register again: %s", msg.reason)
            self._start_registering(LinkState.REGISTERING)

    def on_goodbye(self, msg: Goodbye) -> None:
        """The bridge is leaving (we register again) or dismisses this client (we close)."""
        if msg.retry:
            self._lost(f"the bridge left: {msg.reason}")
            return
        error = ConnectionLost(f"the bridge dismissed this client: {msg.reason}")
        log.error("%s", error.message)
        self.close()
        self._open.fail_all(error)
        self._events.emit("disconnect", msg.reason)
        self._events.emit("error", error)

    def on_sub(self, frames: list[bytes]) -> None:
        """A broadcast from the bridge's PUB: a beacon with a new epoch means it restarted."""
        try:
            msg = decode(frames, self._limits)
        except ProtocolError as exc:
            log.warning("bad broadcast from the bridge: %s", exc.message)
            return
        if isinstance(msg, Beacon):
            if self._beacon_seen is not None:
                self._beacon_seen.set()
            if msg.epoch == self.epoch:
                # The same bridge run is alive and beating: its ROUTER may be busy (reading a
                # hostile peer's huge message to its end), which is no reason to leave it.
                self.last_heard = time.monotonic()
            elif self._state is LinkState.READY:
                log.info("the bridge restarted (epoch %s -> %s); registering again", self.epoch, msg.epoch)
                self._start_registering(LinkState.REGISTERING)

    def on_monitor(self, event: MonitorEvent) -> None:
        """A DEALER socket event: failed security handshakes become errors."""
        endpoint = self._channel.endpoint
        if event.event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._handshake_failures = 0
            return
        if event.event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            error: ZmqcrossError = AuthenticationError(
                f"the bridge at {endpoint} refused this client's CURVE key (ZAP status {event.value}): "
                "add this client's public key file to the bridge's allow-list"
            )
        elif event.event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            error = AuthenticationError(
                f"security handshake with {endpoint} failed: one side uses CURVE and the other does not "
                f"(this client has CURVE {'on' if self._curve else 'off'})"
            )
        elif event.event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            # A CURVE mismatch usually shows up as the bridge dropping the connection
            # mid-handshake (EPIPE), not as a protocol error; a streak of them is the sign.
            self._handshake_failures += 1
            if self._handshake_failures != HANDSHAKE_FAILURES:
                return
            error = AuthenticationError(
                f"the security handshake with {endpoint} failed {HANDSHAKE_FAILURES} times in a row: "
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
            if self._state is not LinkState.READY:
                continue
            silent = time.monotonic() - self.last_heard
            if silent > self._heartbeat_timeout:
                self._lost(f"no answer from the bridge for {silent:.1f} s")
                continue
            try:
                self._channel.send(Ping(sent_at=time.time(), mono=time.monotonic()))
            except ConnectionLost as exc:
                self._lost(exc.message)
