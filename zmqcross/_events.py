"""Named events with sync or async handlers, for the public classes.

A handler that raises never breaks the socket loop that emitted the event: the error is
logged and passed to the ``error`` event's handlers instead.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, overload

__all__ = ["EventEmitter", "Handler"]

Handler = Callable[..., Any]
"""A plain function or a coroutine function; its return value is awaited when awaitable."""

H = TypeVar("H", bound=Handler)


class EventEmitter:
    """Handlers by event name. Unknown names are refused, so a typo fails loudly."""

    def __init__(self, names: Iterable[str], logger: logging.Logger) -> None:
        self._handlers: dict[str, list[Handler]] = {name: [] for name in names}
        self._log = logger
        self._tasks: set[asyncio.Future[Any]] = set()

    @overload
    def on(self, name: str) -> Callable[[H], H]: ...

    @overload
    def on(self, name: str, handler: H) -> H: ...

    def on(self, name: str, handler: H | None = None) -> H | Callable[[H], H]:
        """Add ``handler`` for ``name``; without a handler, return a decorator that adds one."""
        if name not in self._handlers:
            known = ", ".join(sorted(self._handlers))
            raise ValueError(f"unknown event {name!r}; events are: {known}")
        if handler is None:

            def decorate(fn: H) -> H:
                self._handlers[name].append(fn)
                return fn

            return decorate
        if not callable(handler):
            raise TypeError(f"handler for {name!r} must be callable, not {type(handler).__name__}")
        self._handlers[name].append(handler)
        return handler

    def off(self, name: str, handler: Handler) -> None:
        """Remove one registration of ``handler`` for ``name``."""
        self._handlers[name].remove(handler)

    def handlers(self, name: str) -> tuple[Handler, ...]:
        """The handlers registered for ``name``, in registration order."""
        return tuple(self._handlers[name])

    def emit(self, name: str, *args: Any) -> None:
        """Call every handler of ``name``; async ones run as tasks."""
        for handler in self._handlers[name]:
            try:
                result = handler(*args)
            except Exception as exc:  # a user's handler must not kill the socket loop
                self._failed(name, exc)
                continue
            if inspect.isawaitable(result):
                self.track(result, name)

    def track(self, awaitable: Awaitable[Any], name: str) -> asyncio.Future[Any]:
        """Run ``awaitable`` as a task whose failure is reported like a handler's."""
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, name))
        return task

    def _finished(self, task: asyncio.Future[Any], name: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failed(name, task.exception())  # type: ignore[arg-type]

    def _failed(self, name: str, exc: BaseException) -> None:
        self._log.error("%r handler raised", name, exc_info=exc)
        if name != "error" and "error" in self._handlers:
            self.emit("error", exc)

    async def aclose(self) -> None:
        """Cancel handler tasks still running and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
