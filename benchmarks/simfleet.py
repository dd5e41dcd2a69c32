"""A simulated fleet: many machines and clusters against one real bridge, without discord.py.

Each simulated machine is a DEALER that speaks the real protocol the way a machine agent
does: it registers, asks for its share, claims it (registers again saying it runs it),
pings every second, answers the bridge's read probes and status requests, and answers
every eval for its clusters at once (``2`` per cluster). Several machines share one
process (one ``zmq.Poller`` over their sockets), so 128 machines take 16 light processes.

The bridge runs in the driver's process, as in the main benchmark, and what is measured
there is the bridge's own cost: a registration storm (every machine connects at the same
moment: time until every cluster is placed and ready, and that none was lost or placed
twice), ``broadcast_eval`` latency and throughput to every cluster, the bridge's CPU per
eval and its memory.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import sys
import time
from typing import Any

import orjson
import zmq

from cpu import thread_cpu_ns
from stats import summarize

import zmqcross
from zmqcross.protocol import (
    PROTOCOL_VERSION,
    STATUS_SERVICE,
    Batch,
    Hosting,
    Ping,
    Pong,
    Register,
    Reply,
    ShardDataRequest,
    decode,
    dump,
    encode,
    load,
)

MACHINES_PER_PROCESS = 8


class SimMachine:
    """One simulated machine agent on a DEALER (see the module docstring)."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, name: str, token: str) -> None:
        self.name = name
        self.token = token
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.ROUTING_ID, f"{name}/{secrets.token_hex(4)}".encode())
        self.sock.connect(endpoint)
        self.ids = 0
        self.waiting: dict[int, str] = {}
        self.clusters: list[int] = []
        self.shards: list[list[int]] = []
        self.hosting: Hosting | None = None
        self.evals = 0
        self.started = time.time()

    def send(self, msg: Any) -> None:
        self.sock.send_multipart(encode(msg))

    def ask(self, what: str, msg_for: Any) -> None:
        self.ids += 1
        self.waiting[self.ids] = what
        self.send(msg_for(self.ids))

    def register(self) -> None:
        self.ask("register" if self.hosting is None else "claim", lambda i: Register(
            id=i, deadline=time.time() + 30, protocol=PROTOCOL_VERSION, token=self.token,
            machine_id=self.name, agent="bot", hosting=self.hosting))

    def ping(self) -> None:
        self.send(Ping(sent_at=time.time(), mono=time.monotonic()))

    def handle(self, frames: list[bytes]) -> None:
        header = orjson.loads(frames[0])
        kind = header["type"]
        if kind == "eval":  # the hot path: every cluster here answers 2, built from the header
            wanted = header.get("clusters")
            mine = self.clusters if wanted is None else [c for c in self.clusters if c in set(wanted)]
            reply = {"type": "eval_reply", "reply_to": header["id"], "slots": [{"cluster": c, "ok": True} for c in mine]}
            self.sock.send_multipart([orjson.dumps(reply), *([b"2"] * len(mine))])
            self.evals += 1
            return
        msg = decode(frames)
        if isinstance(msg, Batch):
            for inner in msg.messages():
                self.handle(inner)
        elif isinstance(msg, Ping):
            self.send(Pong(sent_at=msg.sent_at))
        elif msg.type == "request" and msg.service == STATUS_SERVICE:
            now = time.time()
            statuses = [{"id": c, "shards": list(s), "pid": os.getpid(), "state": "ready", "guilds": 0, "restarts": 0,
                         "started_at": self.started, "uptime": now - self.started, "last_heartbeat": now,
                         "exit_code": None} for c, s in zip(self.clusters, self.shards, strict=True)]
            self.send(Reply(reply_to=msg.id, data=dump(statuses)))
        elif msg.type in ("welcome", "reply", "error"):
            what = self.waiting.pop(msg.reply_to, None)
            if msg.type == "error":
                print(f"{self.name}: the bridge refused {what}: {msg.error.message}", file=sys.stderr, flush=True)
            elif what == "register":
                self.ask("share", lambda i: ShardDataRequest(id=i, deadline=time.time() + 30))
            elif what == "share":
                share = load(msg.data)
                self.clusters, self.shards = share["cluster_list"], share["shard_list"]
                self.hosting = Hosting(plan_version=share["plan_version"], total_shards=share["total_shards"],
                                       cluster_list=tuple(self.clusters),
                                       shard_list=tuple(tuple(s) for s in self.shards))
                self.register()  # the claim: "I run these"


def _serve(endpoint: str, names: list[str], token: str, start_at: float, stop: Any) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    time.sleep(max(start_at - time.time(), 0.0))  # every process connects at the same moment
    machines = [SimMachine(ctx, endpoint, name, token) for name in names]
    poller = zmq.Poller()
    by_sock = {}
    for m in machines:
        poller.register(m.sock, zmq.POLLIN)
        by_sock[m.sock] = m
        m.register()
    next_ping = time.monotonic() + 1.0
    while not stop.is_set():
        for sock, _ in poller.poll(200):
            m = by_sock[sock]
            while True:
                try:
                    frames = sock.recv_multipart(zmq.DONTWAIT)
                except zmq.Again:
                    break
                m.handle(frames)
        if time.monotonic() >= next_ping:
            next_ping += 1.0
            for m in machines:
                m.ping()
    for m in machines:
        m.sock.close(0)
    ctx.term()


async def _until_placed(bridge: zmqcross.Bridge, clusters: int, machines: int, timeout: float) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        status = await bridge.status(timeout=10)
        bots = [m for m in status.machines if m.agent == "bot"]
        held = [c.id for m in bots for c in m.clusters if c.ready]
        if len(held) == clusters and sorted(held) == list(range(clusters)):
            return {"machines_registered": len(bots), "clusters_placed": len(held), "placed_twice": 0}
        if time.monotonic() > end:
            return {"machines_registered": len(bots), "clusters_placed": len(set(held)),
                    "placed_twice": len(held) - len(set(held)), "timed_out": True}
        await asyncio.sleep(0.05)


async def measure_sim(machines: int, clusters_per_machine: int, *, n: int, warmup: int,
                      throughput_s: float) -> dict[str, Any]:
    """One simulated fleet of ``machines`` x ``clusters_per_machine``; see the module docstring."""
    from fleet import free_port_pair

    clusters = machines * clusters_per_machine
    token = secrets.token_hex(16)
    port = free_port_pair()
    bridge = zmqcross.Bridge(auth_token=token, port=port, total_shards=clusters, shards_per_cluster=1,
                             total_machines=machines, request_timeout=60, claim_timeout=120)
    await bridge.start()
    mp = multiprocessing.get_context("spawn")
    stop = mp.Event()
    names = [f"sim-{i:03d}" for i in range(machines)]
    start_at = time.time() + 1.5  # time for the processes to start before they all connect
    procs = [mp.Process(target=_serve, args=(f"tcp://127.0.0.1:{port}", names[i:i + MACHINES_PER_PROCESS], token,
                                             start_at, stop), daemon=True)
             for i in range(0, machines, MACHINES_PER_PROCESS)]
    row: dict[str, Any] = {"machines": machines, "clusters": clusters, "processes": len(procs)}
    try:
        for proc in procs:
            proc.start()
        await asyncio.sleep(max(start_at - time.time(), 0.0))
        began = time.monotonic()
        storm = await _until_placed(bridge, clusters, machines, timeout=120)
        row["registration_storm"] = {**storm, "all_placed_s": round(time.monotonic() - began, 2)}
        everyone = [2] * clusters

        async def one() -> bool:
            return await bridge.broadcast_eval("1+1", timeout=30) == everyone

        for _ in range(warmup):
            await one()
        # What the bridge spends with no eval at all (every machine's pings, its probes and
        # beacons): subtracted below, so that the per-eval figures are the evals' own.
        pid = os.getpid()
        cpu0, t0 = thread_cpu_ns(pid), time.perf_counter()
        await asyncio.sleep(2.0)
        idle_us_per_s = (thread_cpu_ns(pid) - cpu0) / 1000 / (time.perf_counter() - t0)
        row["bridge_idle_cpu_share"] = round(idle_us_per_s / 1e6, 4)
        samples, failures = [], 0
        cpu0, began = thread_cpu_ns(pid), time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            ok = await one()
            if ok:
                samples.append((time.perf_counter() - t0) * 1000)
            else:
                failures += 1
        row["broadcast_eval_ms"] = {**summarize(samples), "failures": failures}
        serial_us = (thread_cpu_ns(pid) - cpu0) / 1000 - idle_us_per_s * (time.perf_counter() - began)
        row["bridge_cpu_us_per_serial_eval"] = round(serial_us / n, 1)
        done, failed = 0, 0
        end = time.perf_counter() + throughput_s

        async def worker() -> None:
            nonlocal done, failed
            while time.perf_counter() < end:
                try:
                    good = await one()
                except zmqcross.ZmqcrossError:
                    good = False
                done, failed = done + good, failed + (not good)

        cpu0, t0 = thread_cpu_ns(pid), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(32)))
        took = time.perf_counter() - t0
        busy_us = (thread_cpu_ns(pid) - cpu0) / 1000 - idle_us_per_s * took
        row["throughput"] = {"in_flight": 32, "evals_per_sec": round(done / took, 1), "failures": failed,
                             "bridge_cpu_us_per_eval": round(busy_us / max(done, 1), 1)}
        row["bridge_cpu_us_per_eval_per_cluster"] = round(row["throughput"]["bridge_cpu_us_per_eval"] / clusters, 2)
        row["bridge_rss_mb"] = round(_rss_mb(), 1)
    finally:
        stop.set()
        for proc in procs:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()
        await bridge.close()
    return row


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
