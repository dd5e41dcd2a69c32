"""A machine's relay thread alone: its CPU per eval under load, without a fleet around it.

    .venv/bin/python benchmarks/relay_bench.py [--seconds 5] [--in-flight 32] [--runs 3] [--evals N]

The relay core's real pieces (RelayCore, SocketLink, PipeConn, ClusterRelay) run on their
own thread, as in a machine. This process plays the bridge on a ROUTER, sending evals in
waves (a batch of 32, then every answer, then the next) so the relay sees the same
batches every time, and two child processes play clusters that answer every eval at once
with the fixed answer head. It prints the relay thread's CPU per eval (``time.thread_time``
on that thread), which `make bench` only shows summed over every thread of four machines.

Timed, it still moves 10-20 % between runs on a shared 2-core VM. For a change of a few
per cent, count instructions instead: ``--evals N`` does a fixed amount of work, and under
``valgrind --tool=callgrind --separate-threads=yes`` the relay thread's count for two
values of N, differenced, is its instructions per eval, within 0.5 % run to run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson
import zmq

from zmqcross._records import RecordReader, pack
from zmqcross._relaying import answers_frames, eval_route
from zmqcross.protocol import (
    DEFAULT_LIMITS,
    Batch,
    EvalRequest,
    Heartbeat,
    batches,
    decode_header,
    encode,
    fit_answer,
    read_header,
)
from zmqcross.relay import ClusterRelay, PipeConn, RelayCore, RouteTable, Serving, SocketLink

CLUSTERS = 2


def _cluster(end: Connection) -> None:
    """Answer every eval of a read at once, in one record of answers, as a cluster's cork does."""
    fd = end.fileno()
    reader = RecordReader(DEFAULT_LIMITS)
    while True:
        count = os.readv(fd, [reader.buffer()])
        if count == 0:
            return
        reader.advance(count)
        answers = [(orjson.loads(frames[0])["id"], True, b"2") for frames in reader.records()]
        if answers:
            os.writev(fd, pack(answers_frames(answers)))


def _relay(core: RelayCore, dealer: zmq.Socket[Any]) -> tuple[SocketLink, list[PipeConn], list[Any]]:
    relay = ClusterRelay(core, lambda conn, msg: None)
    link: SocketLink

    def respond(frames: list[bytes], reply_to: int) -> None:  # what a Channel does with an answer
        link.post(fit_answer(frames, reply_to))

    def on_frames(frames: list[bytes], nested: bool = False) -> None:  # a Client's core handler, in short
        header = read_header(frames)
        if header["type"] == "eval":
            relay.dispatch_eval(eval_route(header, frames), respond)
            return
        msg = decode_header(header, frames)
        assert isinstance(msg, Batch) and not nested
        for inner in msg.messages():
            on_frames(inner, True)

    link = SocketLink(core, dealer, on_frames)
    core.submit(link.attach)
    mp = multiprocessing.get_context("spawn")
    pipes, children, serving = [], [], {}
    for cid in range(CLUSTERS):
        here, there = mp.Pipe(duplex=True)
        child = mp.Process(target=_cluster, args=(there,), daemon=True)
        child.start()
        there.close()
        conn = PipeConn(
            core, here, on_frames=relay.from_pipe, on_closed=lambda c, e: None, name=f"cluster {cid}"
        )
        conn.start()
        pipes.append(conn)
        children.append(child)
        serving[cid] = Serving(cluster=cid, state="ready", pipe=conn, down={})
    relay.routes = RouteTable(
        total_shards=CLUSTERS,
        everyone=tuple(serving),
        mine=frozenset(serving),
        serving=serving,
        owners=serving,
    )
    return link, pipes, children


def _thread_time(core: RelayCore) -> float:
    got: queue.Queue[float] = queue.Queue()
    core.submit(lambda: got.put(time.thread_time()))
    return got.get(timeout=5)


def run(seconds: float, in_flight: int, evals: int = 0) -> dict[str, float]:
    core = RelayCore(name="bench-relay")
    core.start()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    link, pipes, children = _relay(core, dealer)
    link.send(encode(Heartbeat(sent_at=0.0, ready=True)))  # the ROUTER learns the DEALER's routing id
    peer = router.recv_multipart()[0]
    ids = iter(range(1, 1 << 62))

    def send(count: int) -> None:
        deadline = time.time() + 60
        messages = [encode(EvalRequest(id=next(ids), deadline=deadline, script="1+1")) for _ in range(count)]
        for frames in batches(messages):
            router.send_multipart([peer, *frames])

    def answered(parts: list[bytes]) -> int:
        header = orjson.loads(parts[1])
        return len(header["sizes"]) if header["type"] == "batch" else 1

    def load(duration: float, evals: int = 0) -> int:
        # In waves: a batch of ``in_flight`` evals, then every answer, then the next batch.
        # The relay then sees the same batches every time, and its cost per eval is steady.
        done = 0
        end = time.perf_counter() + duration
        while (done < evals) if evals else (time.perf_counter() < end):
            send(in_flight)
            outstanding = in_flight
            while outstanding:
                outstanding -= answered(router.recv_multipart())
            done += in_flight
        return done

    load(1.0, evals and in_flight * 10)  # warm
    cpu0, wall0 = _thread_time(core), time.perf_counter()
    done = load(seconds, evals)
    cpu1, wall1 = _thread_time(core), time.perf_counter()
    for pipe in pipes:
        pipe.close()
    core.submit(link.detach)
    core.stop()
    for child in children:
        child.join(5)
    dealer.close(0)
    router.close(0)
    ctx.term()
    return {"evals_per_sec": done / (wall1 - wall0), "relay_cpu_us_per_eval": (cpu1 - cpu0) / done * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--evals",
        type=int,
        default=0,
        help="a fixed number of evals instead of --seconds (under callgrind: same work, same count)",
    )
    args = parser.parse_args()
    rows = [run(args.seconds, args.in_flight, args.evals) for _ in range(args.runs)]
    for row in rows:
        print(
            f"{row['evals_per_sec']:8.0f} evals/s   relay thread {row['relay_cpu_us_per_eval']:5.1f} us CPU per eval"
        )
    cpu = statistics.median(row["relay_cpu_us_per_eval"] for row in rows)
    print(
        f"median: {cpu:.1f} us of the relay thread's CPU per eval ({CLUSTERS} clusters, {args.in_flight} in flight)"
    )


if __name__ == "__main__":
    main()
