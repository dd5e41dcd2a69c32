"""The floor: bare pyzmq + pipes in the benchmark's shape, children answering at once.

bridge ROUTER -> 4 agent processes (DEALER) -> 2 pipe-connected children each -> back.
Synchronous sockets, blocking loops, no protocol, no CURVE: the price of the software
path alone, so zmqcross's overhead shows as a ratio to it.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

import zmq

from stats import summarize

AGENTS = 4
CHILDREN = 2


def _child(conn: Connection) -> None:
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(message)


def _agent(endpoint: str) -> None:
    mp = multiprocessing.get_context("spawn")
    pipes = []
    for _ in range(CHILDREN):
        here, there = mp.Pipe()
        mp.Process(target=_child, args=(there,), daemon=True).start()
        pipes.append(here)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"hello")
    while True:
        message = sock.recv()
        if message == b"stop":
            for pipe in pipes:
                pipe.close()
            return
        for pipe in pipes:
            pipe.send_bytes(message)
        replies = [pipe.recv_bytes() for pipe in pipes]
        sock.send_multipart(replies)


def measure_floor(n: int, warmup: int) -> dict[str, Any]:
    """p50/p99 of one broadcast-and-gather round over the bare stack."""
    mp = multiprocessing.get_context("spawn")
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    # Agents are not daemons (daemons may not have children); they exit on "stop".
    agents = [mp.Process(target=_agent, args=(f"tcp://127.0.0.1:{port}",)) for _ in range(AGENTS)]
    for agent in agents:
        agent.start()
    ids = [sock.recv_multipart()[0] for _ in range(AGENTS)]
    samples = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        for ident in ids:
            sock.send_multipart([ident, b"1+1"])
        for _ in ids:
            sock.recv_multipart()
        if i >= warmup:
            samples.append((time.perf_counter() - t0) * 1000)
    for ident in ids:
        sock.send_multipart([ident, b"stop"])
    for agent in agents:
        agent.join(5)
    sock.close(0)
    return summarize(samples)


if __name__ == "__main__":
    print(measure_floor(300, 30))
