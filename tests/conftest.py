"""Shared fixtures: bridges and clients on loopback with free ports, CURVE key sets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import discord
import pytest

import zmqcross
from zmqcross import Bridge, Client, CurveClient, CurveServer, generate_keypair
from zmqcross.gateway import GatewayServer, point_discord_py_at

TOKEN = "test-token"

# Fast heartbeats so silence is detected within a test's budget.
FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}

# The offline gateways of the tests enforce Discord's IDENTIFY limits (max_concurrency 1) with
# a short window, and every bridge paces the fleet's IDENTIFYs by the same window.
IDENTIFY_WINDOW = 0.05
IDENTIFY = {"identify_window": IDENTIFY_WINDOW}


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = random.Random()


def free_port() -> int:
    """A port ``p`` that, with ``p + 1``, was free a moment ago.

    A bridge's PUB socket takes ``port + 1`` unless told otherwise, so both must be free.
    Ports come from below the kernel's ephemeral range: a port the kernel hands out
    for some outgoing connection (zmq's, the gateway's) cannot take one from under a
    test between this check and its bind, as happened with port 0's picks.
    """
    top = min(_ephemeral_low(), 65535) - 2
    for _ in range(200):
        port = _PORTS.randrange(max(top - 12000, 1024), top)
        try:
            for candidate in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair below the ephemeral range")


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Keys:
    """A bridge key pair and client key pairs, with an allow-list directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.allowed = root / "allowed"
        self.bridge_public, self.bridge_secret = generate_keypair(root / "bridge", "bridge")
        generate_keypair(self.allowed, "operator")  # the allow-list directory must not start empty

    def client(self, name: str, *, allowed: bool = True) -> CurveClient:
        public, secret = generate_keypair(self.allowed if allowed else self.root / "outsiders", name)
        return CurveClient.from_files(secret, server_key=self.bridge_public)

    def server(self) -> CurveServer:
        return CurveServer.from_files(self.bridge_secret, allow=self.allowed)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


BridgeFactory = Callable[..., Awaitable[Bridge]]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_bridge() -> AsyncIterator[BridgeFactory]:
    bridges: list[Bridge] = []

    async def make(**options: Any) -> Bridge:
        settings: dict[str, Any] = {
            "auth_token": TOKEN,
            "port": 0,
            "total_shards": 4,
            "shards_per_cluster": 2,
            "total_machines": 2,
            **IDENTIFY,
        }
        settings.update(options)
        # A short lease: failovers in tests wait for it (Bridge's default is 10 s).
        settings.setdefault("lease", float(settings.get("heartbeat_timeout", 4.0)) + 1.0)
        bridge = Bridge(**settings)
        await bridge.start()
        bridges.append(bridge)
        return bridge

    yield make
    for bridge in bridges:
        await bridge.close()


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    clients: list[Client] = []

    async def make(
        bridge: Bridge | None = None, *, connect: bool = True, initial_data: Any = None, **options: Any
    ) -> Client:
        settings: dict[str, Any] = {"auth_token": TOKEN, "connect_timeout": 5.0}
        if bridge is not None:
            settings.update(port=bridge.port, pub_port=bridge.pub_port)
        settings.update(options)
        client = Client(**settings)
        clients.append(client)
        if connect:
            await client.connect(initial_data)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayServer]:
    """The offline Discord with 64 guilds (the fleet tests' size)."""
    server = GatewayServer(guilds=64, identify_window=IDENTIFY_WINDOW)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def bridge(make_bridge: BridgeFactory) -> Bridge:
    return await make_bridge()


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zmqcross")


__all__ = ["FAST", "IDENTIFY", "IDENTIFY_WINDOW", "TOKEN", "Keys", "free_port", "wait_for", "zmqcross"]


async def paced_like_discord_py(initial: bool) -> None:
    """discord.py's own IDENTIFY pacing (a wait before every IDENTIFY but the first), with the
    tests' window instead of Discord's 5 s: for bare discord.py clients, not fleet clusters."""
    if not initial:
        await asyncio.sleep(IDENTIFY_WINDOW * 1.5)


@contextlib.asynccontextmanager
async def offline_discord(guilds: int) -> AsyncIterator[GatewayServer]:
    """The offline Discord with ``guilds``, its limits on with the tests' window, discord.py pointed at it."""
    async with GatewayServer(guilds=guilds, identify_window=IDENTIFY_WINDOW) as server:
        with discord_py_pointed_at(server):
            yield server


@contextlib.contextmanager
def discord_py_pointed_at(server: GatewayServer) -> Iterator[None]:
    """Point discord.py at ``server`` and restore its real URLs afterwards."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    point_discord_py_at(server.api_base, server.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (``item.failed_call``): fixtures read it."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.failed_call = report.failed  # type: ignore[attr-defined]


def failed_test(request: pytest.FixtureRequest) -> bool:
    """Whether the test using this fixture request failed (for teardown diagnostics)."""
    return bool(getattr(request.node, "failed_call", False))
