"""Pipe framing between a machine and its clusters: records survive any split, bad lengths are refused."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from zmqcross import protocol as p
from zmqcross.cluster._pipe import PipeEnd, open_pipe, pack, unpack
from zmqcross.protocol import Limits


def feed(end: PipeEnd, data: bytes, cuts: list[int]) -> None:
    """Deliver ``data`` the way a transport would, in pieces cut at ``cuts``."""
    position = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        piece = data[position:cut]
        while piece:
            buffer = end.get_buffer(len(piece))
            n = min(len(buffer), len(piece))
            buffer[:n] = piece[:n]
            end.buffer_updated(n)
            piece = piece[n:]
        position = max(position, cut)


def test_pack_and_unpack() -> None:
    frames = [b"header", b"", b"x" * 1000]
    record = b"".join(pack(frames))
    (length,) = struct.unpack(">I", record[:4])
    assert length == len(record) - 4
    assert unpack(memoryview(record)[4:]) == frames


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    st.lists(st.integers(0, 5000), max_size=12),
    st.integers(1, 4),
)
def test_records_survive_any_split(bodies: list[bytes], cuts: list[int], copies: int) -> None:
    got: list[p.Message] = []
    end = PipeEnd(got.append, lambda exc: None, name="test")
    sent = [p.Send(data=body) for body in bodies] * copies
    stream = b"".join(piece for msg in sent for piece in pack(p.encode(msg)))
    feed(end, stream, [c % (len(stream) + 1) for c in cuts])
    assert got == sent


def test_big_record_grows_the_buffer() -> None:
    got: list[p.Message] = []
    end = PipeEnd(got.append, lambda exc: None, name="test")
    big = p.Reply(reply_to=1, data=b"7" * 5_000_000)
    feed(end, b"".join(pack(p.encode(big))), [100, 70_000, 3_000_000])
    assert got == [big]


async def test_bogus_length_is_refused_before_buffering() -> None:
    closed: list[object] = []
    here, there = multiprocessing.Pipe()
    limits = Limits(max_frame_bytes=1024, max_message_bytes=4096, max_header_bytes=512)
    end = await open_pipe(here, PipeEnd(lambda m: None, closed.append, limits=limits, name="test"))
    os.write(there.fileno(), struct.pack(">I", 2**31))  # claims a 2 GiB record
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed and not end.open
    there.close()


async def test_corrupt_frame_table_closes_the_pipe() -> None:
    closed: list[object] = []
    here, there = multiprocessing.Pipe()
    end = await open_pipe(here, PipeEnd(lambda m: None, closed.append, name="test"))
    os.write(there.fileno(), struct.pack(">II", 4, 99))  # a 4-byte record claiming 99 frames
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed and not end.open
    there.close()
