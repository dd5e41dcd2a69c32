"""Inside a cluster: the gate between discord.py's gateway events and the bot's handlers.

See :mod:`zmqcross._handover` for the rule. The gate is a small state machine
(:data:`GATE_TRANSITIONS`); :func:`install` puts it into a discord.py client by wrapping
each gateway parser (so the gate knows which event a dispatch comes from) and the
client's ``dispatch`` (so it decides whether the handlers run now, later, or never).

The cache is never held back: parsers always run, so a held cluster answers evals with
the current state. Only the handlers (``on_message``, ``wait_for``...) wait.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._handover import fingerprint

if TYPE_CHECKING:
    import discord

__all__ = ["GATE_TRANSITIONS", "MAX_HELD", "EventGate", "GateState", "install"]

log = logging.getLogger("zmqcross.cluster")

MAX_HELD = 200_000
"""Most handler calls a held cluster keeps; past it, it goes live at once (and says so)."""


class GateState(enum.Enum):
    """Where a cluster's gateway events go."""

    LIVE = "live"  # to the handlers, as they come
    HELD = "held"  # kept, until the clusters it replaces have retired
    RETIRED = "retired"  # nowhere: a successor handles them


GATE_TRANSITIONS: dict[GateState, frozenset[GateState]] = {
    GateState.LIVE: frozenset({GateState.RETIRED}),
    GateState.HELD: frozenset({GateState.LIVE, GateState.RETIRED}),
    GateState.RETIRED: frozenset(),
}
"""Every move a gate can make."""


@dataclass(slots=True)
class _Held:
    event: int  # which gateway event it came from (0: none, e.g. on_ready)
    fingerprint: int | None
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class EventGate:
    """Decides, for each dispatch, whether the bot's handlers run it (see the module docstring)."""

    def __init__(self, *, held: bool, max_held: int = MAX_HELD) -> None:
        self.state = GateState.HELD if held else GateState.LIVE
        self.max_held = max_held
        self.recording: Counter[int] | None = None  # live, with a successor on its way
        self.held: list[_Held] = []
        self.overflowed = False
        self._event = 0  # the gateway event being parsed (a sequence number), 0 outside a parser
        self._events = 0
        self._fingerprint: int | None = None

    @property
    def watching(self) -> bool:
        """Whether parsers must tell the gate which event they parse (else the fast path)."""
        return self.state is not GateState.LIVE or self.recording is not None

    def _move(self, to: GateState) -> None:
        if to not in GATE_TRANSITIONS[self.state]:
            raise RuntimeError(f"an event gate cannot go from {self.state.value} to {to.value}")
        self.state = to

    # ------------------------------------------------------------------ parsers

    def parsing(self, name: str, data: Any) -> None:
        """A gateway event ``name`` with payload ``data`` is about to be parsed."""
        self._events += 1
        self._event = self._events
        if self.state is GateState.RETIRED:
            self._fingerprint = None
            return
        self._fingerprint = fp = fingerprint(name, data)
        if self.state is GateState.LIVE and self.recording is not None:
            self.recording[fp] += 1  # its handlers run now: a successor must skip it

    def parsed(self) -> None:
        """The parser returned."""
        self._event, self._fingerprint = 0, None

    # ------------------------------------------------------------------ dispatch

    def admit(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether this dispatch runs the handlers now; a held one is kept for :meth:`release`."""
        state = self.state
        if state is GateState.LIVE:
            return True
        if state is GateState.RETIRED:
            return self._event == 0  # its own doings (disconnects, close) still reach it
        self.held.append(_Held(self._event, self._fingerprint, name, args, kwargs))
        if len(self.held) >= self.max_held:
            self.overflowed = True
        return False

    # ------------------------------------------------------------------ handover steps

    def record(self) -> None:
        """A successor is on its way: count the events handled from now on."""
        if self.recording is None:
            self.recording = Counter()

    def keep(self) -> None:
        """The successor failed: serve on, and stop counting."""
        self.recording = None

    def retire(self) -> list[int]:
        """Stop handling gateway events; the fingerprints of those handled while recording."""
        handled = self.recording or Counter()
        if self.state is not GateState.RETIRED:
            self._move(GateState.RETIRED)
        self.recording = None
        self.held.clear()
        return list(handled.elements())

    def release(self, handled: Iterable[int]) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        """Go live: the held calls to run now, without those of events in ``handled``."""
        if self.state is not GateState.HELD:
            return []
        self._move(GateState.LIVE)
        skip = Counter(handled)
        keep: dict[int, bool] = {}  # gateway event -> whether its calls run (all or none of them)
        run = []
        for call in self.held:
            if call.event and call.fingerprint is not None:
                kept = keep.get(call.event)
                if kept is None:
                    kept = keep[call.event] = skip[call.fingerprint] <= 0
                    if not kept:
                        skip[call.fingerprint] -= 1
                if not kept:
                    continue
            run.append((call.name, call.args, call.kwargs))
        self.held.clear()
        return run


def install(
    bot: discord.Client,
    gate: EventGate,
    *,
    overflowed: Callable[[], None] = lambda: None,
    observe: Callable[[str, tuple[Any, ...]], None] = lambda name, args: None,
) -> Callable[..., None]:
    """Put ``gate`` between ``bot``'s gateway and its handlers; returns the ungated dispatch.

    ``observe(name, args)`` sees every dispatch first, whatever the gate decides (the
    shards' health). A held gate that fills up (:data:`MAX_HELD`) goes live at once, then
    calls ``overflowed``.
    """
    state = bot._connection
    dispatch = bot.dispatch

    def gated(name: str, /, *args: Any, **kwargs: Any) -> None:
        observe(name, args)
        if gate.state is GateState.LIVE or gate.admit(name, args, kwargs):
            dispatch(name, *args, **kwargs)
        elif gate.overflowed:
            log.warning(
                "%d handler calls held back: going live before the clusters this one replaces "
                "have retired (events they handled may be handled again)",
                len(gate.held),
            )
            for held_name, held_args, held_kwargs in gate.release(()):
                dispatch(held_name, *held_args, **held_kwargs)
            overflowed()

    for name, parse in list(state.parsers.items()):
        state.parsers[name] = _watched(gate, name, parse)
    bot.dispatch = gated  # type: ignore[method-assign]
    state.dispatch = gated
    return dispatch


def _watched(gate: EventGate, name: str, parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def watched(data: Any) -> Any:
        if not gate.watching:
            return parse(data)
        gate.parsing(name, data)
        try:
            return parse(data)
        finally:
            gate.parsed()

    return watched
