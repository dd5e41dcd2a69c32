"""Message framing over the pipe between a machine agent and a cluster process.

The pipe is a ``multiprocessing.Pipe()`` (a Unix socket pair), but neither side uses
``Connection.send_bytes``/``recv_bytes`` on it: those block, and a cluster's 10 MB eval
result would freeze the event loop on both ends while it crosses. Each side wraps its
end in an asyncio transport instead, and messages are the wire protocol's frames::

    record  = u32 length, then ``length`` bytes of: u32 frame count, (u32 size, bytes) * count

so an eval result encoded once in the cluster reaches the bridge as the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

from .._transport import CORK
from ..errors import ProtocolError
from ..protocol import DEFAULT_LIMITS, Limits, Message, check_limits, decode_header, encode, read_header

__all__ = ["PipeEnd", "open_pipe", "pack", "unpack"]

log = logging.getLogger("zmqcross.cluster")

_U32 = struct.Struct(">I")

READ_CHUNK = 65536
"""Free space offered to each read; a bigger record grows the buffer to fit it."""
_OVERHEAD_PER_FRAME = _U32.size


def pack(frames: list[bytes]) -> list[bytes]:
    """The pieces of one record (header, sizes and frames), ready for ``writelines``."""
    count = len(frames)
    sizes = [len(f) for f in frames]
    head = struct.pack(f">II{count}I", _U32.size * (1 + count) + sum(sizes), count, *sizes)
    return [head, *frames]


def unpack(record: memoryview) -> list[bytes]:
    """The frames of one record body (without its length prefix)."""
    if len(record) < _U32.size:
        raise ProtocolError("pipe record too short")
    (count,) = _U32.unpack_from(record, 0)
    offset = _U32.size
    sizes_end = offset + count * _U32.size
    if sizes_end > len(record):
        raise ProtocolError("pipe record's frame table runs past its end")
    sizes = struct.unpack_from(f">{count}I", record, offset)
    frames = []
    position = sizes_end
    for size in sizes:
        frames.append(bytes(record[position : position + size]))
        position += size
    if position != len(record):
        raise ProtocolError("pipe record's frame sizes do not add up to its length")
    return frames


class PipeEnd(asyncio.BufferedProtocol):
    """One end of a cluster pipe: decodes arriving records, encodes outgoing messages.

    ``peek(header, frames)``, if given, sees each record's parsed header first and
    returns True for one it has handled itself (a machine handles eval replies this way,
    a cluster evals, without building them); everything else is decoded and goes to
    ``on_message``.

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
        self._buffer = bytearray(READ_CHUNK)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes
        self._transport: asyncio.Transport | None = None
        self._held: list[bytes] = []  # records written while the cork is held
        # A record's length is capped before reading it, so a broken peer cannot make
        # this side buffer without bound.
        self._max_record = limits.max_message_bytes + limits.max_frames * _OVERHEAD_PER_FRAME + 2 * _U32.size

    # asyncio.BufferedProtocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def get_buffer(self, sizehint: int) -> memoryview:
        free = len(self._buffer) - self._end
        if free < READ_CHUNK:
            pending = self._end - self._start
            needed = max(pending + READ_CHUNK, min(self._record_size() or 0, self._max_record + _U32.size))
            if self._start and needed <= len(self._buffer):
                self._buffer[:pending] = self._buffer[self._start : self._end]  # compact
            else:
                grown = bytearray(max(needed, 2 * len(self._buffer)))
                grown[:pending] = self._buffer[self._start : self._end]
                self._buffer = grown
            self._start, self._end = 0, pending
        return memoryview(self._buffer)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        with CORK:  # answers to every record of this read leave together
            self._read_records()

    def _read_records(self) -> None:
        while True:
            size = self._record_size()
            if size is None:
                break
            if size > self._max_record + _U32.size:  # before buffering toward a bogus length
                self._fail(ProtocolError(f"{self._name}: pipe record of {size} bytes is over the limit"))
                return
            if self._end - self._start < size:
                break
            with memoryview(self._buffer) as view:
                record = view[self._start + _U32.size : self._start + size]
                try:
                    frames = unpack(record)
                except ProtocolError as exc:  # the stream is out of step: nothing after this is trustworthy
                    self._fail(ProtocolError(f"{self._name}: {exc.message}"))
                    return
                finally:
                    record.release()
            self._start += size
            self._dispatch(frames)
        if self._start == self._end:
            self._start = self._end = 0

    def _record_size(self) -> int | None:
        if self._end - self._start < _U32.size:
            return None
        size: int = _U32.unpack_from(self._buffer, self._start)[0]  # annotated: struct returns Any
        return _U32.size + size

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
            if self._held:
                self._flush()
            self._transport.writelines(pack(frames))
            return True
        if not self._held:
            CORK.defer(self._flush)
        self._held.extend(pack(frames))
        return True

    def _flush(self) -> None:
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
