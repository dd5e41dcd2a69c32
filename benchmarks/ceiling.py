"""The ceiling of a batch-first protocol in Python: the floor's shape, plus each hop's own work.

:mod:`floor` measures bare pyzmq and pipes: its children echo whole writes and run no
code. This measures what a Python fleet could reach if a burst of evals were the unit of
work at every hop (one header per burst, not per eval), keeping only the work each hop
cannot avoid per eval:

- the bridge (asyncio, as zmqcross's is): a caller's coroutine and future per eval, its
  JSON header encoded once, and every cluster's result decoded on the way back;
- an agent (a synchronous poll loop, as zmqcross's relay core is): the ids of a burst
  read from one small header, the burst written to each pipe as one record, each answer
  put in its eval's slot, and one reply per round to the bridge;
- a child (asyncio, as a discord.py cluster must be): each eval's header parsed, its
  script run (compiled once), its result encoded; one record of answers per read.

CURVE is on, as in ``7_throughput_math``; no limits, no deadlines, no checks, no
discord.py: a ceiling, not a design. The gap between it and ``7_throughput_math`` is what
a batch-first protocol (and trimming the rest) could at most win; the gap between it and
the floor is Python's own per-eval work. Run with one eval in flight, it says what the
shape costs a single eval when the code on its path is as short as it can be.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import socket
import statistics
import struct
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.asyncio
from cpu import CpuMeter

AGENTS = 4
CHILDREN = 2

_COUNT = struct.Struct(">I")
_ID = struct.Struct(">Q")


def _record(frames: list[bytes]) -> bytes:
    """Frames as one pipe record: a count, then each frame's length and bytes."""
    parts = [_COUNT.pack(len(frames))]
    for frame in frames:
        parts.append(_COUNT.pack(len(frame)))
        parts.append(frame)
    return b"".join(parts)


class _Records:
    """Splits a byte stream into the frame lists :func:`_record` made."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[bytes]]:
        self._buffer += data
        buffer, out, at = self._buffer, [], 0
        while True:
            if len(buffer) - at < 4:
                break
            (count,) = _COUNT.unpack_from(buffer, at)
            pos, frames = at + 4, []
            for _ in range(count):
                if len(buffer) - pos < 4:
                    break
                (size,) = _COUNT.unpack_from(buffer, pos)
                if len(buffer) - pos - 4 < size:
                    break
                frames.append(bytes(buffer[pos + 4 : pos + 4 + size]))
                pos += 4 + size
            if len(frames) < count:
                break
            out.append(frames)
            at = pos
        del buffer[:at]
        return out


class _ChildEnd(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self._records = _Records()
        self._done = done
        self._codes: dict[str, Any] = {}
        self._namespace: dict[str, Any] = {"bot": None}
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ids: list[bytes] = []
        results: list[bytes] = []
        for frames in self._records.feed(data):
            for frame in frames:  # one eval's header each
                header = orjson.loads(frame)
                script = header["script"]
                code = self._codes.get(script)
                if code is None:
                    code = self._codes[script] = compile(script, "<eval>", "eval")
                value = eval(code, {**self._namespace, "context": header.get("context")})  # noqa: S307
                ids.append(_ID.pack(header["id"]))
                results.append(orjson.dumps(value))
        if ids and self._transport is not None:
            self._transport.write(_record([b"".join(ids), *results]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._done.set_result(None)


def _child(conn: Connection) -> None:
    async def main() -> None:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        sock.setblocking(False)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await asyncio.get_running_loop().connect_accepted_socket(lambda: _ChildEnd(done), sock)
        await done

    asyncio.run(main())


def _agent(endpoint: str, server_key: bytes) -> None:
    mp = multiprocessing.get_context("spawn")
    pipes: list[socket.socket] = []
    for _ in range(CHILDREN):
        here, there = mp.Pipe()
        mp.Process(target=_child, args=(there,), daemon=True).start()
        pipe = socket.socket(fileno=os.dup(here.fileno()))
        here.close()
        pipes.append(pipe)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.curve_serverkey = server_key
    sock.connect(endpoint)
    sock.send(b"hello")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    readers = {pipe.fileno(): (pipe, _Records()) for pipe in pipes}
    for fd in readers:
        poller.register(fd, zmq.POLLIN)
    waiting: dict[int, list[Any]] = {}  # eval id -> [answers still due, results]
    while True:
        done: list[int] = []
        for source, _ in poller.poll():
            if source is sock:
                while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    frames = sock.recv_multipart()
                    if frames == [b"stop"]:
                        for pipe in pipes:
                            pipe.close()
                        return
                    for eval_id in orjson.loads(frames[0]):  # the burst's ids, then its evals
                        waiting[eval_id] = [CHILDREN, []]
                    record = _record(frames[1:])
                    for pipe in pipes:
                        pipe.sendall(record)
                continue
            pipe, records = readers[source]
            for head, *results in records.feed(pipe.recv(1 << 20)):
                for (eval_id,), result in zip(_ID.iter_unpack(head), results, strict=True):
                    slot = waiting[eval_id]
                    slot[1].append(result)
                    slot[0] -= 1
                    if not slot[0]:
                        done.append(eval_id)
        if done:
            counts, results = [], []
            for eval_id in done:
                got = waiting.pop(eval_id)[1]
                counts.append((eval_id, len(got)))
                results.extend(got)
            sock.send_multipart([orjson.dumps(counts), *results])


async def _bridge(seconds: float, in_flight: int) -> dict[str, Any]:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    public, secret = zmq.curve_keypair()
    sock.curve_server = True
    sock.curve_secretkey = secret
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    mp = multiprocessing.get_context("spawn")
    agents = [mp.Process(target=_agent, args=(f"tcp://127.0.0.1:{port}", public)) for _ in range(AGENTS)]
    for agent in agents:
        agent.start()
    ids = [(await sock.recv_multipart())[0] for _ in agents]
    loop = asyncio.get_running_loop()
    pending: dict[int, list[Any]] = {}  # eval id -> [future, results, machines still due]
    outbox: list[tuple[int, bytes]] = []
    counter = itertools.count(1)

    def flush() -> None:
        burst = outbox[:]
        outbox.clear()
        head = orjson.dumps([eval_id for eval_id, _ in burst])
        frames = [header for _, header in burst]
        for ident in ids:
            sock.send_multipart([ident, head, *frames], copy=True)

    async def broadcast_eval(script: str) -> list[Any]:
        eval_id = next(counter)
        future = loop.create_future()
        pending[eval_id] = [future, [], len(ids)]
        header = {"type": "eval", "id": eval_id, "script": script, "deadline": time.time() + 10}
        if not outbox:
            loop.call_soon(flush)
        outbox.append((eval_id, orjson.dumps(header)))
        return await future  # type: ignore[no-any-return]

    async def receive() -> None:
        while True:
            _, head, *results = await sock.recv_multipart()
            at = 0
            for eval_id, count in orjson.loads(head):
                slot = pending[eval_id]
                slot[1].extend(orjson.loads(result) for result in results[at : at + count])
                at += count
                slot[2] -= 1
                if not slot[2]:
                    del pending[eval_id]
                    slot[0].set_result(slot[1])

    completed = 0
    took_ms: list[float] = []

    async def worker(until: float) -> None:
        nonlocal completed
        while (began := time.perf_counter()) < until:
            await broadcast_eval("1+1")
            took_ms.append((time.perf_counter() - began) * 1000)
            completed += 1

    reader = asyncio.create_task(receive())
    await asyncio.gather(*(worker(time.perf_counter() + 1.0) for _ in range(in_flight)))  # warm up
    children = [int(pid) for agent in agents for pid in _children(agent.pid)]
    meter = CpuMeter(
        {"bridge": [os.getpid()], "agents": [a.pid for a in agents if a.pid], "children": children}
    )
    completed = 0
    took_ms.clear()
    started = time.perf_counter()
    await asyncio.gather(*(worker(started + seconds) for _ in range(in_flight)))
    took = time.perf_counter() - started
    cpu = meter.per_call(completed)
    reader.cancel()
    for ident in ids:
        await sock.send_multipart([ident, b"stop"])
    for agent in agents:
        agent.join(5)
    sock.close(0)
    ctx.term()
    return {
        "in_flight": in_flight,
        "seconds": round(took, 3),
        "evals_per_sec": round(completed / took, 1),
        "p50_ms": round(statistics.median(took_ms), 3),
        "cpu_us_per_eval": cpu,
    }


def _children(pid: int | None) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def measure_ceiling(seconds: float, in_flight: int = 32) -> dict[str, Any]:
    """Evals per second to every child with ``in_flight`` outstanding, batch-first at every hop."""
    return asyncio.run(_bridge(seconds, in_flight))


if __name__ == "__main__":
    print(measure_ceiling(5.0))
    print(measure_ceiling(5.0, in_flight=1))
