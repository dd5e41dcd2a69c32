"""Transition tables for the fabric's state machines (the client's link, a cluster process).

Each machine lists every allowed move in one dict, from a state to the states it may go
to next (h11's ``_state.py`` is the model). A move the table does not list is a bug in
zmqcross, not something a caller can cause, so it raises at once instead of leaving an
object in a state nobody planned for. Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Generic, TypeVar

__all__ = ["IllegalTransition", "Transitions"]

S = TypeVar("S", bound=Enum)


class IllegalTransition(RuntimeError):
    """A state machine was asked for a move its transition table does not allow."""


class Transitions(Generic[S]):
    """The moves allowed between the states of one kind of object (``what`` names it in errors)."""

    __slots__ = ("_moves", "what")

    def __init__(self, what: str, moves: Mapping[S, Iterable[S]]) -> None:
        self.what = what
        self._moves = {state: frozenset(targets) for state, targets in moves.items()}

    def allowed(self, state: S) -> frozenset[S]:
        """The states ``state`` may move to."""
        return self._moves.get(state, frozenset())

    def check(self, old: S, new: S) -> None:
        """Raise :class:`IllegalTransition` unless the table allows ``old`` -> ``new``."""
        if new not in self._moves.get(old, ()):
            allowed = ", ".join(sorted(str(s.value) for s in self.allowed(old))) or "nothing"
            raise IllegalTransition(
                f"{self.what} cannot go from {old.value!r} to {new.value!r} "
                f"(from {old.value!r} it may go to: {allowed})"
            )

    def moves(self) -> list[tuple[S, S]]:
        """Every allowed move, as (from, to) pairs in the table's and the enum's order."""
        return [(old, new) for old, targets in self._moves.items() for new in type(old) if new in targets]
