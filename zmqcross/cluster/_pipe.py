"""A cluster's end of its pipe to the machine, on the cluster's event loop.

The pipe is a ``multiprocessing.Pipe()`` (a Unix socket pair), but neither side uses
``Connection.send_bytes``/``recv_bytes`` on it: those block, and a cluster's 10 MB eval
result would freeze the event loop while it crosses. The cluster wraps its end in an
asyncio transport; the machine reads and writes its ends on its relay core's thread
(:mod:`zmqcross.relay`). Both frame messages as records (:mod:`zmqcross._records`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

from .._records import RecordReader, pack, unpack
from .._relaying import ANSWER_ENTRY_BYTES, ANSWER_TAG, answer_frames, answers_frames
from .._transport import CORK
from ..errors import ProtocolError
from ..protocol import DEFAULT_LIMITS, Limits, Message, check_limits, decode_header, encode, read_header

__all__ = ["PipeEnd", "open_pipe", "pack", "unpack"]

log = logging.getLogger("zmqcross.cluster")


class PipeEnd(asyncio.BufferedProtocol):
    """A cluster's end of its pipe: decodes arriving records, encodes outgoing messages.

    ``peek(header, frames)``, if given, sees each record's parsed header first and
    returns True for one it has handled itself (a cluster runs evals this way, without
    building them); everything else is decoded and goes to ``on_message``. (The machine's
    ends are served by its relay core: :class:`zmqcross.relay.PipeConn`.)

    A buffered protocol: the transport reads straight into this end's own buffer
    (``recv_into``). The plain ``data_received`` path allocates a 256 KiB bytes object per
    read, which costs an mmap/mremap/munmap for every small message.
    """

    def __init__(
        self,
        on_message: Callable[[Message], None],
        on_closed: Callable[[Exception | None], None],
        *,
        limits: Limits = DEFAULT_LIMITS,
        name: str,
        peek: Callable[[dict[str, Any], list[bytes]], bool] | None = None,
    ) -> None:
        self._on_message = on_message
        self._peek = peek
        self._on_closed = on_closed
        self._limits = limits
        self._name = name
        self._reader = RecordReader(limits)
        self._transport: asyncio.Transport | None = None
        self._held: list[bytes] = []  # pieces of the records written while the cork is held
        self._answers: list[tuple[int, bool, bytes]] = []  # eval answers for the next answer record
        self._answer_bytes = 0  # that record's size so far
        self._deferred = False  # a flush waits for the cork's release

    # asyncio.BufferedProtocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._reader.advance(nbytes)
        with CORK:  # answers to every record of this read leave together
            try:
                for frames in self._reader.records():
                    self._dispatch(frames)
            except ProtocolError as exc:  # the stream is out of step: nothing after this is trustworthy
                self._fail(ProtocolError(f"{self._name}: {exc.message}"))

    def _dispatch(self, frames: list[bytes]) -> None:
        try:
            header = read_header(frames, self._limits)
            # A relay handles some kinds from the header alone (zmqcross._relaying).
            if self._peek is not None and self._peek(header, frames):
                return
            msg = decode_header(header, frames)
        except ProtocolError as exc:
            log.warning("%s: dropped a bad pipe message: %s", self._name, exc.message)
            return
        except Exception:  # one bad message must not kill the pipe
            log.exception("%s: pipe message handler failed", self._name)
            return
        try:
            self._on_message(msg)
        except Exception:  # one bad message must not kill the pipe
            log.exception("%s: pipe message handler failed", self._name)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_closed(exc)

    # sending -------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """Whether the other side can still be written to."""
        return self._transport is not None and not self._transport.is_closing()

    def send(self, msg: Message) -> bool:
        """Queue ``msg`` for the other side; False if the pipe is closed. Never blocks."""
        frames = encode(msg)
        check_limits(frames, self._limits)
        return self.send_frames(frames)

    def send_frames(self, frames: list[bytes]) -> bool:
        """Queue already-encoded frames (forwarded untouched); False if the pipe is closed."""
        if self._transport is None or self._transport.is_closing():
            return False
        if not CORK.held:
            # Held records go first. (Not reached today: a cork is released within the
            # callback that took it, before anything else can write.)
            self._flush()
            self._transport.writelines(pack(frames))
            return True
        self._close_answers()  # answers sent before this message leave before it
        self._defer()
        self._held.extend(pack(frames))
        return True

    def send_answer(self, request_id: int, ok: bool, result: bytes) -> bool:
        """Queue an eval's answer; False if the pipe is closed.

        While the cork is held (a read's evals being run) answers share one record, so the
        machine reads one record per burst; a record stays within ``max_frames`` and
        ``max_message_bytes``. Outside a burst an answer leaves at once, alone.
        """
        if self._transport is None or self._transport.is_closing():
            return False
        if not CORK.held:
            return self.send_frames(answer_frames(request_id, ok, result))
        size = ANSWER_ENTRY_BYTES + len(result)
        limits = self._limits
        if self._answers and (
            len(self._answers) + 2 > limits.max_frames or self._answer_bytes + size > limits.max_message_bytes
        ):
            self._close_answers()
        if not self._answers:
            self._answer_bytes = len(ANSWER_TAG)
        self._answers.append((request_id, ok, result))
        self._answer_bytes += size
        self._defer()
        return True

    def _close_answers(self) -> None:
        if self._answers:
            self._held.extend(pack(answers_frames(self._answers)))
            self._answers = []

    def _defer(self) -> None:
        if not self._deferred:
            self._deferred = True
            CORK.defer(self._flush)

    def _flush(self) -> None:
        self._deferred = False
        self._close_answers()
        held, self._held = self._held, []
        if held and self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(held)

    def close(self) -> None:
        """Close this end (the other side sees end of file) after what is already written."""
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: Exception) -> None:
        log.error("%s", error)
        if self._transport is not None:
            self._transport.abort()


async def open_pipe(conn: Connection, end: PipeEnd) -> PipeEnd:
    """Drive ``conn``'s socket with ``end`` on the running loop; ``conn`` itself is closed."""
    fd = os.dup(conn.fileno())
    conn.close()
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: end, sock)
    return end
