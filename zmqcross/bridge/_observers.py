"""Who hears how each request went (``Bridge.observe``), for metrics; and permission checks.

The hot path tests one attribute: :attr:`Observers.current` is None when nobody observes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import PermissionDenied
from ..protocol import ErrorInfo, ErrorReply, EvalReply, Message
from ..registry import Peer
from ._outgoing import Outgoing

__all__ = ["Gate", "Observer", "Observers", "outcome_of"]

log = logging.getLogger("zmqcross.bridge")

Observer = Callable[[str, str, float], object]
"""``observer(kind, outcome, seconds)``: see :meth:`zmqcross.Bridge.observe`."""


def outcome_of(msg: Message) -> str:
    """How an answer went, for metrics: ok, partial, or the error's code."""
    if isinstance(msg, ErrorReply):
        return msg.error.code
    if isinstance(msg, EvalReply):
        failed = sum(not slot.ok for slot in msg.slots)
        return "ok" if not failed else ("error" if failed == len(msg.slots) else "partial")
    return "ok"


class Observers:
    """The observers added with ``Bridge.observe``, folded into one callable."""

    __slots__ = ("_all", "current")

    def __init__(self) -> None:
        self._all: tuple[Observer, ...] = ()
        self.current: Observer | None = None

    def add(self, observer: Observer) -> Callable[[], None]:
        """Add ``observer``; returns the function that removes it."""
        self._all = (*self._all, observer)
        self.current = _all_of(self._all)

        def stop() -> None:
            self._all = tuple(o for o in self._all if o is not observer)
            self.current = _all_of(self._all)

        return stop

    def wrap(self, kind: str, respond: Callable[[Message], object]) -> Callable[[Message], object]:
        """``respond``, also telling the observers how the answer went and how long it took."""
        observer = self.current
        if observer is None:
            return respond
        started = time.perf_counter()

        def answered(msg: Message) -> object:
            try:
                observer(kind, outcome_of(msg), time.perf_counter() - started)
            except Exception:  # metrics must never break an answer
                log.exception("the request observer failed")
            return respond(msg)

        return answered


def _all_of(observers: tuple[Observer, ...]) -> Observer | None:
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def each(kind: str, outcome: str, seconds: float) -> None:
        for observer in observers:
            observer(kind, outcome, seconds)

    return each


class Gate:
    """Checks a peer's permission for an action; a refusal is answered, logged and observed."""

    __slots__ = ("_observers", "_outgoing")

    def __init__(self, outgoing: Outgoing, observers: Observers) -> None:
        self._outgoing = outgoing
        self._observers = observers

    def allowed(self, peer: Peer, action: str, request_id: int | None) -> bool:
        """Whether ``peer`` may ``action``; if not, it is told why (as the answer to ``request_id``)."""
        if action in peer.info.permissions:
            return True
        error = PermissionDenied(
            f"client {peer.info.id!r} (agent {peer.info.agent!r}, key {peer.info.key!r}) may not {action}; "
            f"it may: {', '.join(sorted(peer.info.permissions)) or 'nothing'}"
        )
        log.warning("%s", error.message)
        observer = self._observers.current
        if observer is not None:
            observer(action, error.code, 0.0)
        self._outgoing.send(
            peer.routing_id,
            ErrorReply(reply_to=request_id, error=ErrorInfo.from_exception(error, with_traceback=False)),
        )
        return False
