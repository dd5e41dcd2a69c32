"""Who is connected to the bridge, and whether a new registration may join. Pure.

The bridge's socket loop feeds this table (registrations, traffic, departures) and
asks it questions (who is this routing id, who has gone silent). It holds no sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_NAME_LENGTH", "Admission", "ClientInfo", "Peer", "Registry", "check_name"]

MAX_NAME_LENGTH = 128
"""Longest machine id or agent name a bridge accepts."""


def check_name(what: str, value: str) -> str | None:
    """Why ``value`` is not a usable machine id or agent name, or None if it is."""
    if not value:
        return f"{what} must not be empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"{what} is {len(value)} characters; the limit is {MAX_NAME_LENGTH}"
    if not value.isprintable():
        return f"{what} {value!r} has unprintable characters"
    return None


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A connected client as the bridge sees it.

    ``id`` is the client's machine id, unique on the bridge. ``key`` is the name of its
    CURVE key in the allow-list (None without CURVE); ``address`` its IP address as
    libzmq reported it during the handshake, when known.
    """

    id: str
    agent: str
    initial_data: Any
    address: str | None
    key: str | None
    connected_at: float
    permissions: frozenset[str]

    @property
    def machine_id(self) -> str:
        """The machine id this client registered with (the same as ``id``)."""
        return self.id


@dataclass(slots=True)
class Peer:
    """The bridge's live entry for one client: its routing id, record and liveness."""

    routing_id: bytes
    info: ClientInfo
    user_id: str | None
    last_seen: float
    clusters: tuple[int, ...] = field(default=())
    plan_version: str | None = None  # the plan its clusters run, as it last told us
    standby: bool = False  # asked for work when every chunk was held
    leaving: bool = False  # draining: its chunk is handed over, in-flight work may still answer
    lease_from: float = 0.0  # monotonic: when the bridge last granted it its lease (welcome, pong)
    stalled: str | None = None  # why it gets no chunk: it did not start one it was handed


@dataclass(frozen=True, slots=True)
class Admission:
    """The registry's answer to a registration: refused (``reason``), or in, replacing ``replaces``."""

    reason: str | None = None
    replaces: Peer | None = None

    @property
    def accepted(self) -> bool:
        """Whether the registration may proceed."""
        return self.reason is None


class Registry:
    """Connected peers, by routing id and by client id."""

    def __init__(self) -> None:
        self._by_route: dict[bytes, Peer] = {}
        self._by_id: dict[str, Peer] = {}
        # machine id -> (CURVE key, its name) of every host: kept while the machine is away,
        # so that during its restart no other key can register as it and take its clusters.
        self._bound: dict[str, tuple[str, str | None]] = {}

    def __len__(self) -> int:
        return len(self._by_route)

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._by_route.values()))

    def get(self, routing_id: bytes) -> Peer | None:
        """The peer behind ``routing_id``, if registered."""
        return self._by_route.get(routing_id)

    def by_id(self, client_id: str) -> Peer | None:
        """The peer registered as ``client_id``, if any."""
        return self._by_id.get(client_id)

    def admit(self, *, routing_id: bytes, client_id: str, user_id: str | None) -> Admission:
        """May ``routing_id`` register as ``client_id``?

        The same connection registering again is a refresh. A client id once registered
        with a CURVE key stays that key's, connected or not (until :meth:`unbind_key`);
        another connection may take over a live client id only with the same key (a
        restarted process). Without CURVE (``user_id`` None) the caller decides what a
        takeover needs.
        """
        bound = self._bound.get(client_id)
        if bound is not None and bound[0] != user_id:
            return Admission(
                reason=f"machine id {client_id!r} is registered by another CURVE key ({bound[1]!r})"
            )
        existing = self._by_id.get(client_id)
        if existing is None or existing.routing_id == routing_id:
            return Admission()
        if existing.user_id != user_id:
            return Admission(
                reason=f"machine id {client_id!r} is registered by another CURVE key ({existing.info.key!r})"
            )
        return Admission(replaces=existing)

    def bound_keys(self) -> set[str]:
        """The CURVE keys that hold client ids."""
        return {key for key, _ in self._bound.values()}

    def unbind_key(self, user_id: str) -> list[str]:
        """Forget which client ids ``user_id`` held (its key was revoked); returns them."""
        freed = [client_id for client_id, (key, _) in self._bound.items() if key == user_id]
        for client_id in freed:
            del self._bound[client_id]
        return freed

    def add(self, peer: Peer) -> None:
        """Insert or refresh ``peer``; call :meth:`admit` first."""
        old = self._by_route.get(peer.routing_id)
        if old is not None and old.info.id != peer.info.id:
            self._by_id.pop(old.info.id, None)
        self._by_route[peer.routing_id] = peer
        self._by_id[peer.info.id] = peer
        if peer.user_id is not None and "host" in peer.info.permissions:
            # Only hosts are bound: their ids guard clusters, and only trusted keys are hosts,
            # so the table cannot be grown by a key that may merely ask.
            self._bound[peer.info.id] = (peer.user_id, peer.info.key)

    def remove(self, routing_id: bytes) -> Peer | None:
        """Drop the peer behind ``routing_id`` and return it."""
        peer = self._by_route.pop(routing_id, None)
        if peer is not None and self._by_id.get(peer.info.id) is peer:
            del self._by_id[peer.info.id]
        return peer

    def touch(self, routing_id: bytes, now: float) -> Peer | None:
        """Note traffic from ``routing_id`` at monotonic time ``now``."""
        peer = self._by_route.get(routing_id)
        if peer is not None:
            peer.last_seen = now
        return peer

    def silent(self, now: float, timeout: float) -> list[Peer]:
        """Peers heard from no later than ``timeout`` seconds before ``now``."""
        return [p for p in self._by_route.values() if now - p.last_seen > timeout]

    def select(self, predicate: Callable[[ClientInfo], bool] | None = None) -> list[Peer]:
        """Peers whose record passes ``predicate`` (all without one), in registration order."""
        return [p for p in self._by_route.values() if predicate is None or predicate(p.info)]
