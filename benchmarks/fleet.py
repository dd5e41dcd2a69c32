"""Start a benchmark fleet: offline gateway and machines as processes, the bridge in this process.

The bridge lives in the driver's process and the cases are timed there, as the original's
harness times them inside its bridge.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from zmqcross import AccessPolicy, Bridge, CurveServer, generate_keypair

HERE = Path(__file__).resolve().parent
IDENTIFY_WINDOW = 0.05
"""The offline gateway enforces one IDENTIFY per this many seconds (one bucket); the bridge paces by it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port p with p + 1 also free (the bridge's PUB socket takes the next one)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@dataclass
class Fleet:
    bridge: Bridge
    gateway: subprocess.Popen[str]
    machines: dict[str, subprocess.Popen[str]]
    guilds: int
    clusters: int
    cache: object | None = None
    pids: dict[str, list[int]] = field(default_factory=dict)
    api: str = ""
    ready_after: float = 0.0  # seconds from the machines' start to every guild ready


async def _read_api(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    if not line.startswith("ZMQCROSS_DISCORD_API="):
        raise RuntimeError(f"the offline gateway did not start: {line!r}")
    return line.strip().split("=", 1)[1]


@asynccontextmanager
async def fleet(
    *,
    machines: int = 4,
    total_shards: int = 16,
    shards_per_cluster: int = 2,
    guilds: int = 20000,
    curve: bool = True,
    cache: bool = True,
    ready_timeout: float = 240.0,
    max_concurrency: int = 1,
    identify_window: float = IDENTIFY_WINDOW,
) -> AsyncIterator[Fleet]:
    """A running fleet; everything is stopped when the block ends."""
    work = Path(tempfile.mkdtemp(prefix="zmqcross-bench-"))
    keys = work / "keys"
    names = [f"machine-{i}" for i in range(1, machines + 1)]
    server_curve = None
    if curve:
        generate_keypair(keys, "bridge")
        for name in names:
            generate_keypair(keys / "allowed", name)
        server_curve = CurveServer.from_files(keys / "bridge.key_secret", allow=keys / "allowed")
    logs = open(work / "fleet.log", "w")  # noqa: SIM115 - closed below
    gateway = subprocess.Popen(
        [sys.executable, "-m", "zmqcross.gateway", "--port", str(free_port()), "--guilds", str(guilds),
         "--shards-hint", str(total_shards), "--identify-window", str(identify_window),
         "--max-concurrency", str(max_concurrency)],
        stdout=subprocess.PIPE, stderr=logs, text=True,
    )
    procs: dict[str, subprocess.Popen[str]] = {}
    bridge = None
    try:
        api = await _read_api(gateway, 30)
        port = free_port_pair()
        token = secrets.token_hex(16)
        # CURVE keys a policy does not name may only request and use the cache: the machines host.
        machine_keys = AccessPolicy(keys={"machine-*": ["host", "eval", "request", "cache"]})
        bridge = Bridge(auth_token=token, port=port, total_shards=total_shards, shards_per_cluster=shards_per_cluster,
                        total_machines=machines, curve=server_curve, permissions=machine_keys, request_timeout=120,
                        identify_window=identify_window, max_concurrency=max_concurrency)
        server = None
        if cache:
            from zmqcross import CacheServer

            server = CacheServer(bridge, paths=[{"path": "bench", "max_size": 10000}])
        bridge.on("client_request", lambda request, client: {"pong": request.data.get("ping")})  # case 6b
        await bridge.start()
        env = {**os.environ, "ZMQCROSS_DISCORD_API": api, "ZMQCROSS_AUTH_TOKEN": token,
               "ZMQCROSS_BRIDGE_PORT": str(port), "ZMQCROSS_LOG_LEVEL": "WARNING"}
        if curve:
            env["ZMQCROSS_KEYS"] = str(keys)
        started = time.monotonic()
        for name in names:
            procs[name] = subprocess.Popen([sys.executable, str(HERE / "bench_machine.py")],
                                           env={**env, "ZMQCROSS_MACHINE_ID": name}, stdout=subprocess.DEVNULL,
                                           stderr=logs)
        clusters = total_shards // shards_per_cluster
        end = time.monotonic() + ready_timeout
        while True:
            counts = await bridge.broadcast_eval("len(bot.guilds) if bot.is_ready() else -1", return_exceptions=True,
                                                 timeout=10)
            if all(isinstance(c, int) and c >= 0 for c in counts) and sum(counts) == guilds:
                break
            if time.monotonic() > end:
                raise RuntimeError(f"the fleet was not ready after {ready_timeout:g} s: {counts}")
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {work / 'fleet.log'}")
            await asyncio.sleep(0.5)
        result = Fleet(bridge, gateway, procs, guilds, clusters, server, api=api,
                       ready_after=time.monotonic() - started)
        result.pids["clusters"] = await bridge.broadcast_eval("import os\nos.getpid()")
        yield result
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if bridge is not None:
            await bridge.close()
        gateway.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(gateway.wait, 10)
        except subprocess.TimeoutExpired:
            gateway.kill()
        logs.close()
