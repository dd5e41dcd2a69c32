"""The floor: bare pyzmq + pipes in the benchmark's shape, children answering at once.

bridge ROUTER -> 4 agent processes (DEALER) -> 2 pipe-connected children each -> back.
Synchronous sockets, blocking loops, no protocol, no CURVE: the price of the software
path alone, so zmqcross's overhead shows as a ratio to it.

Two measurements: one broadcast at a time (latency), and many in flight (throughput),
where every hop moves all it has at once, as zmqcross does under load: an agent forwards
whatever the socket holds as one pipe write per child and sends back whatever both
children have answered as one message. What the fleet does per eval beyond that (its
protocol, CURVE, discord.py, the Python each hop runs per message) is the gap between
this figure and `7_throughput_math`.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
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


def _batching_agent(endpoint: str) -> None:
    mp = multiprocessing.get_context("spawn")
    pipes = []
    for _ in range(CHILDREN):
        here, there = mp.Pipe()
        mp.Process(target=_child, args=(there,), daemon=True).start()  # echoes each write whole
        pipes.append(here)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"hello")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    answered: dict[int, list[bytes]] = {}
    for pipe in pipes:
        poller.register(pipe.fileno(), zmq.POLLIN)
        answered[pipe.fileno()] = []
    by_fd = {pipe.fileno(): pipe for pipe in pipes}
    while True:
        for source, _ in poller.poll():
            if source is sock:
                asked: list[bytes] = []
                while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    asked.extend(sock.recv_multipart())
                if b"stop" in asked:
                    for pipe in pipes:
                        pipe.close()
                    return
                for pipe in pipes:
                    pipe.send_bytes(b"\n".join(asked))
                continue
            pipe = by_fd[source]
            while pipe.poll(0):
                answered[source].extend(pipe.recv_bytes().split(b"\n"))
            done = min(len(got) for got in answered.values())
            if done:
                replies = []
                for got in answered.values():
                    replies.append(got[:done])
                    del got[:done]
                sock.send_multipart([b"".join(pair) for pair in zip(*replies, strict=True)])  # a part per eval


def measure_floor_throughput(seconds: float, in_flight: int = 32) -> dict[str, Any]:
    """Broadcasts per second over the bare stack with ``in_flight`` outstanding, batched at every hop."""
    sock, agents, ids = _start_agents(_batching_agent)

    def run(duration: float) -> int:
        answered = dict.fromkeys(ids, 0)
        sent = dict.fromkeys(ids, in_flight)
        for ident in ids:
            sock.send_multipart([ident] + [b"1+1"] * in_flight)
        done = 0
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            parts = sock.recv_multipart()
            answered[parts[0]] += len(parts) - 1
            new = min(answered.values()) - done  # broadcasts every agent has answered
            if new > 0:
                done += new
                for ident in ids:
                    sock.send_multipart([ident] + [b"1+1"] * new)
                    sent[ident] += new
        while any(answered[ident] < sent[ident] for ident in ids):
            parts = sock.recv_multipart()
            answered[parts[0]] += len(parts) - 1
        return done

    run(1.0)
    started = time.perf_counter()
    done = run(seconds)
    took = time.perf_counter() - started
    _stop_agents(sock, agents, ids)
    return {"in_flight": in_flight, "seconds": round(took, 3), "broadcasts_per_sec": round(done / took, 1)}


def measure_floor(n: int, warmup: int) -> dict[str, Any]:
    """p50/p99 of one broadcast-and-gather round over the bare stack."""
    sock, agents, ids = _start_agents(_agent)
    samples = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        for ident in ids:
            sock.send_multipart([ident, b"1+1"])
        for _ in ids:
            sock.recv_multipart()
        if i >= warmup:
            samples.append((time.perf_counter() - t0) * 1000)
    _stop_agents(sock, agents, ids)
    return summarize(samples)


def _start_agents(target: Callable[[str], None]) -> tuple[zmq.Socket[Any], list[Any], list[bytes]]:
    """A ROUTER on loopback and AGENTS processes running ``target`` connected to it, with their ids."""
    mp = multiprocessing.get_context("spawn")
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    # Agents are not daemons (daemons may not have children); they exit on "stop".
    agents = [mp.Process(target=target, args=(f"tcp://127.0.0.1:{port}",)) for _ in range(AGENTS)]
    for agent in agents:
        agent.start()
    return sock, agents, [sock.recv_multipart()[0] for _ in range(AGENTS)]


def _stop_agents(sock: zmq.Socket[Any], agents: list[Any], ids: list[bytes]) -> None:
    for ident in ids:
        sock.send_multipart([ident, b"stop"])
    for agent in agents:
        agent.join(5)
    sock.close(0)


if __name__ == "__main__":
    print(measure_floor(300, 30))
    print(measure_floor_throughput(5.0))
