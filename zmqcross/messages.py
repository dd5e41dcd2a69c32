"""What event handlers receive: custom messages and requests, and how requests get answered."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._events import EventEmitter, Handler
from .errors import MessageTooLarge, SerializationError
from .protocol import ErrorInfo, ErrorReply, Message, Reply, dump, load
from .registry import ClientInfo

__all__ = ["IncomingMessage", "IncomingRequest", "serve_request"]

log = logging.getLogger("zmqcross")


class IncomingMessage:
    """A custom message: ``data`` (decoded on first use) and who sent it.

    ``client`` is the sending client's record on the bridge (None on a client, where
    messages come from the bridge); ``origin`` is the client id a relayed request came
    from (None when the bridge itself sent it).
    """

    __slots__ = ("_data", "_decoded", "_raw", "client", "origin")

    def __init__(self, raw: bytes, *, client: ClientInfo | None = None, origin: str | None = None) -> None:
        self._raw = raw
        self._data: Any = None
        self._decoded = False
        self.client = client
        self.origin = origin

    @property
    def data(self) -> Any:
        """The JSON data that was sent."""
        if not self._decoded:
            self._data = load(self._raw)
            self._decoded = True
        return self._data

    @property
    def raw(self) -> bytes:
        """The encoded JSON, exactly as it arrived."""
        return self._raw

    def __repr__(self) -> str:
        return f"<{type(self).__name__} data={self.data!r}>"


class IncomingRequest(IncomingMessage):
    """A custom request. Answer it with ``await request.reply(data)`` or by returning a value.

    A request is answered exactly once. If no handler replies or returns a value, it is
    answered with ``None``; if a handler raises first, the caller gets that exception
    (with this side's traceback) raised as :class:`~zmqcross.RemoteError`.
    """

    __slots__ = ("_replied", "_request_id", "_respond", "deadline")

    def __init__(
        self,
        raw: bytes,
        *,
        request_id: int,
        deadline: float,
        respond: Callable[[Message], object],
        client: ClientInfo | None = None,
        origin: str | None = None,
    ) -> None:
        super().__init__(raw, client=client, origin=origin)
        self.deadline = deadline
        self._respond = respond
        self._request_id = request_id
        self._replied = False

    @property
    def replied(self) -> bool:
        """Whether an answer (value or error) has been sent."""
        return self._replied

    async def reply(self, data: Any) -> None:
        """Send ``data`` as the answer. Raises RuntimeError if already answered."""
        if self._replied:
            raise RuntimeError("this request has already been answered")
        self.answer(data)

    def answer(self, data: Any) -> None:
        """Synchronous :meth:`reply`, for use inside the library's loops."""
        if self._replied:
            return
        try:
            body = dump(data)
        except SerializationError as exc:
            self.fail(SerializationError(f"the request handler's answer cannot be sent: {exc.message}"))
            return
        self._replied = True
        try:
            self._respond(Reply(reply_to=self._request_id, data=body))
        except MessageTooLarge as exc:
            self._respond(ErrorReply(reply_to=self._request_id, error=ErrorInfo.from_exception(exc)))

    def fail(self, exc: BaseException) -> None:
        """Answer with an error (no-op if already answered)."""
        if self._replied:
            return
        self._replied = True
        self._respond(ErrorReply(reply_to=self._request_id, error=ErrorInfo.from_exception(exc)))


def serve_request(
    request: IncomingRequest,
    handlers: Sequence[Handler],
    args: tuple[Any, ...],
    emitter: EventEmitter,
    event: str,
    *,
    missing: str,
) -> None:
    """Run ``handlers`` on ``request`` in order and make sure it is answered exactly once.

    Sync handlers run inline (no task on the hot path); from the first awaitable on, the
    rest run in one task. ``missing`` is the error text when nobody handles ``event``.
    """
    if not handlers:
        request.fail(NoHandler(missing))
        return
    pending = iter(handlers)
    for handler in pending:
        try:
            result = handler(*args)
        except Exception as exc:
            _handler_failed(request, exc, emitter, event)
            return
        if inspect.isawaitable(result):
            emitter.track(_finish(request, result, pending, args, emitter, event), event)
            return
        if result is not None:
            request.answer(result)
    request.answer(None)


async def _finish(
    request: IncomingRequest,
    first: Any,
    rest: Iterator[Handler],
    args: tuple[Any, ...],
    emitter: EventEmitter,
    event: str,
) -> None:
    try:
        result = await first
        if result is not None:
            request.answer(result)
        for handler in rest:
            result = handler(*args)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                request.answer(result)
    except Exception as exc:
        _handler_failed(request, exc, emitter, event)
        return
    request.answer(None)


def _handler_failed(request: IncomingRequest, exc: Exception, emitter: EventEmitter, event: str) -> None:
    if request.replied:
        emitter.emit("error", exc)  # the caller already has its answer; report it here
    else:
        log.debug("%r handler raised; sending the error to the caller", event, exc_info=exc)
        request.fail(exc)


class NoHandler(Exception):
    """Nobody listens for this kind of request on the answering side."""
