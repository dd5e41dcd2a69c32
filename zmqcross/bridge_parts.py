"""What the bridge's mixins (:mod:`.bridge_inbox`, :mod:`.bridge_fleet`, :mod:`.bridge_routing`) may use.

Declared once here for the type checker; :class:`zmqcross.bridge.Bridge` provides it all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from .events import EventEmitter
    from .fanout import FanOuts
    from .messages import IncomingRequest
    from .planning import Placement, ShardPlan
    from .protocol import Limits, Message
    from .registry import ClientInfo, Peer, Registry
    from .security import AccessPolicy, CurveServer
    from .transport import OpenRequests

__all__ = ["BridgeParts"]


class BridgeParts:
    """State and sending primitives shared by the bridge's parts (annotations only)."""

    _registry: Registry
    _placement: Placement | None
    _open: OpenRequests
    _fanouts: FanOuts
    _events: EventEmitter
    _limits: Limits
    _curve: CurveServer | None
    _policy: AccessPolicy
    _auth_token: str
    _epoch: str
    _beacon_seq: int
    _counters: dict[str, int]
    _heartbeat_interval: float
    _heartbeat_timeout: float
    _request_timeout: float
    _plan: ShardPlan | None
    _plan_options: dict[str, Any]
    _services: dict[str, Any]
    _observer: Callable[[str, str, float], object] | None
    _observers: tuple[Callable[[str, str, float], object], ...]

    if TYPE_CHECKING:

        @property
        def plan(self) -> ShardPlan: ...

        def _send(self, routing_id: bytes, msg: Message) -> None: ...

        def _send_frames(self, routing_id: bytes, frames: list[bytes]) -> bool: ...

        def _queue_frames(self, routing_id: bytes, frames: list[bytes]) -> None: ...

        def _drop(self, peer: Peer, reason: str) -> None: ...

        def _publish_beacon(self) -> None: ...

        def _require_running(self) -> Any: ...

        def _allowed(self, peer: Peer, action: str, request_id: int | None) -> bool: ...

        async def request(
            self,
            data: Any,
            *,
            client: str | ClientInfo,
            timeout: float | None = None,
            service: str | None = None,
        ) -> Any: ...

        async def _serve_status(self, request: IncomingRequest, client: ClientInfo) -> Any: ...
