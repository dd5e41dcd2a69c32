"""Records on a cluster pipe: how messages are framed on the byte stream. Pure.

The pipe between a machine and a cluster is a Unix socket pair. Each message travels as
one record of the wire protocol's frames::

    record  = u32 length, then ``length`` bytes of: u32 frame count, (u32 size, bytes) * count

so an eval result encoded once in the cluster reaches the bridge as the same bytes.
Both ends read with a :class:`RecordReader`: the machine's relay core on its own thread,
a cluster on its event loop (:class:`~zmqcross.cluster._pipe.PipeEnd`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .errors import ProtocolError
from .protocol import Limits

__all__ = ["READ_CHUNK", "RecordReader", "pack", "unpack"]

_U32 = struct.Struct(">I")

READ_CHUNK = 65536
"""Free space offered to each read; a bigger record grows the buffer to fit it."""


_HEADS = [struct.Struct(f">II{count}I") for count in range(9)]
"""Record heads for up to 8 frames, compiled once (every eval's record has 1 or 2)."""


def _head(count: int) -> struct.Struct:
    return _HEADS[count] if count < len(_HEADS) else struct.Struct(f">II{count}I")


def pack(frames: list[bytes]) -> list[bytes]:
    """The pieces of one record (header, sizes and frames), ready for ``writelines``."""
    count = len(frames)
    sizes = list(map(len, frames))
    head = _head(count).pack(_U32.size * (1 + count) + sum(sizes), count, *sizes)
    return [head, *frames]


_SIZES = [struct.Struct(f">{count}I") for count in range(9)]


def _sizes(count: int) -> struct.Struct:
    return _SIZES[count] if count < len(_SIZES) else struct.Struct(f">{count}I")


def unpack(record: memoryview) -> list[bytes]:
    """The frames of one record body (without its length prefix)."""
    if len(record) < _U32.size:
        raise ProtocolError("pipe record too short")
    (count,) = _U32.unpack_from(record, 0)
    offset = _U32.size
    sizes_end = offset + count * _U32.size
    if sizes_end > len(record):
        raise ProtocolError("pipe record's frame table runs past its end")
    sizes = _sizes(count).unpack_from(record, offset)
    frames = []
    position = sizes_end
    for size in sizes:
        frames.append(bytes(record[position : position + size]))
        position += size
    if position != len(record):
        raise ProtocolError("pipe record's frame sizes do not add up to its length")
    return frames


class RecordReader:
    """A receive buffer that bytes are read straight into, and the records in it.

    ``buffer()`` offers free space (read into it with ``recv_into``), ``advance(n)`` counts
    what was read, ``records()`` yields each whole record's frames. A record's length is
    checked against ``limits`` before any of it is buffered, so a broken peer cannot make
    this side buffer without bound: :class:`ProtocolError` then, and for a record whose
    frame table does not add up (the stream is out of step; nothing after it can be trusted).
    """

    __slots__ = ("_buffer", "_end", "_max_record", "_start")

    def __init__(self, limits: Limits) -> None:
        self._buffer = bytearray(READ_CHUNK)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes
        self._max_record = limits.max_message_bytes + limits.max_frames * _U32.size + 2 * _U32.size

    def buffer(self) -> memoryview:
        """Free space at the end of the buffer, at least :data:`READ_CHUNK` bytes."""
        if len(self._buffer) - self._end < READ_CHUNK:
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

    def advance(self, nbytes: int) -> None:
        """``nbytes`` were read into the space :meth:`buffer` offered."""
        self._end += nbytes

    def records(self) -> Iterator[list[bytes]]:
        """The frames of each whole record received, in order; raises ProtocolError (see the class)."""
        while True:
            size = self._record_size()
            if size is None:
                break
            if size > self._max_record + _U32.size:  # before buffering toward a bogus length
                raise ProtocolError(f"pipe record of {size} bytes is over the limit")
            if self._end - self._start < size:
                break
            with memoryview(self._buffer) as view:
                record = view[self._start + _U32.size : self._start + size]
                try:
                    frames = unpack(record)
                finally:
                    record.release()
            self._start += size
            yield frames
        if self._start == self._end:
            self._start = self._end = 0

    def _record_size(self) -> int | None:
        if self._end - self._start < _U32.size:
            return None
        size: int = _U32.unpack_from(self._buffer, self._start)[0]  # annotated: struct returns Any
        return _U32.size + size
