"""Clients through bridge restarts, kills, silence and misuse, on real sockets and processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, TOKEN, free_port, wait_for

from zmqcross import (
    Bridge,
    Client,
    ConfigurationError,
    ConnectionLost,
    MessageTooLarge,
    RequestTimeout,
    SerializationError,
)
from zmqcross.protocol import Limits

HERE = Path(__file__).parent


class BridgeProcess:
    """A bridge running in a child process (tests/bridge_process.py)."""

    def __init__(self, port: int, pub_port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "bridge_process.py"), str(port), str(pub_port)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []

    async def wait_line(self, prefix: str, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
            if not line:
                break
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"bridge process never printed {prefix!r}; it printed {self.lines}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def bridge_processes():
    started: list[BridgeProcess] = []

    def start(port: int, pub_port: int) -> BridgeProcess:
        proc = BridgeProcess(port, pub_port)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


async def test_sigkilled_bridge_is_replaced_and_rebuilds_its_map_from_the_machines(
    bridge_processes, make_client
):
    port, pub_port = free_port(), free_port()
    first = bridge_processes(port, pub_port)
    await first.wait_line("READY")
    machines = [await make_client(port=port, pub_port=pub_port, machine_id=f"m{i}") for i in (1, 2)]
    ready_count = [0, 0]
    for i, machine in enumerate(machines):
        machine.on("ready", lambda i=i: ready_count.__setitem__(i, ready_count[i] + 1))
    shards = [await m.request_shard_data() for m in machines]
    assert [s.cluster_list for s in shards] == [(0, 1), (2, 3)]
    before = await machines[0].request("shard_map")

    first.kill()
    second = bridge_processes(port, pub_port)
    await second.wait_line("READY")
    # Nobody calls connect() again: both machines find the new bridge and re-register.
    await wait_for(lambda: ready_count == [1, 1], timeout=15, what="both machines to re-register")
    after = await machines[0].request("shard_map")
    assert after["held"] == before["held"] == {"m1": [0, 1], "m2": [2, 3]}
    assert after["free"] == []  # nothing handed out afresh: the map came from the machines
    late = await make_client(port=port, pub_port=pub_port, machine_id="late")
    assert (await late.request_shard_data()).standby


async def test_request_during_bridge_outage_completes_after_restart(make_client):
    port, pub_port = free_port(), free_port()
    bridge = Bridge(auth_token=TOKEN, port=port, pub_port=pub_port, **FAST)
    await bridge.start()
    client = await make_client(port=port, pub_port=pub_port, machine_id="m1")
    await bridge.close()
    await wait_for(lambda: not client.connected, what="the client to notice the bridge left")
    pending = asyncio.create_task(client.request("queued", timeout=10))
    await asyncio.sleep(0.3)
    assert not pending.done()
    bridge = Bridge(auth_token=TOKEN, port=port, pub_port=pub_port, **FAST)
    bridge.on("client_request", lambda request, client: f"ran {request.data}")
    await bridge.start()
    try:
        assert await asyncio.wait_for(pending, 10) == "ran queued"
    finally:
        await bridge.close()


async def test_expired_request_is_never_run_late(bridge_processes, make_client):
    port, pub_port = free_port(), free_port()
    first = bridge_processes(port, pub_port)
    await first.wait_line("READY")
    client = await make_client(port=port, pub_port=pub_port, machine_id="m1")
    first.kill()
    with pytest.raises(RequestTimeout, match="request to the bridge: no answer within 0.5 s"):
        await client.request("too-late", timeout=0.5)
    await asyncio.sleep(0.2)  # the request's deadline is now well past
    second = bridge_processes(port, pub_port)
    await second.wait_line("READY")
    await wait_for(lambda: client.connected, timeout=15, what="re-registration")
    assert (await client.request("fresh"))["data"] == "fresh"
    second.proc.send_signal(signal.SIGKILL)
    rest = second.proc.stdout.read() if second.proc.stdout else ""
    ran = [line for line in second.lines + rest.splitlines() if line.startswith("RAN")]
    assert ran == ["RAN 'fresh'"]  # the queued request arrived after its deadline and was dropped


async def test_client_notices_a_dead_bridge(make_client, bridge_processes):
    port, pub_port = free_port(), free_port()
    proc = bridge_processes(port, pub_port)
    await proc.wait_line("READY")
    client = await make_client(port=port, pub_port=pub_port)
    reasons: asyncio.Queue = asyncio.Queue()
    client.on("disconnect", reasons.put_nowait)
    proc.kill()
    reason = await asyncio.wait_for(reasons.get(), 5)
    assert reason.startswith("no answer from the bridge for")
    with pytest.raises(ConnectionLost, match="not connected to the bridge \\(link is lost\\)"):
        await client.send("x")


async def test_connect_timeout_names_the_endpoint() -> None:
    port = free_port()
    client = Client(auth_token=TOKEN, port=port, pub_port=free_port())
    t0 = time.monotonic()
    with pytest.raises(
        ConnectionLost, match=f"no answer from the bridge at tcp://127.0.0.1:{port} within 0.5 s"
    ):
        await client.connect(timeout=0.5)
    assert time.monotonic() - t0 < 3
    with pytest.raises(RuntimeError, match="create a new Client"):
        await client.connect()


async def test_wrong_token_is_refused_quickly(bridge, make_client) -> None:
    from zmqcross import AuthenticationError

    t0 = time.monotonic()
    with pytest.raises(AuthenticationError, match="wrong auth token"):
        await make_client(bridge, auth_token="not-the-token")
    assert time.monotonic() - t0 < 3
    assert bridge.statistics().refused_registrations == 1


async def test_without_curve_a_live_machine_id_cannot_be_taken(bridge, make_client) -> None:
    # Without CURVE a newcomer shows only the token: it must not push a live machine out
    # (the old one would be told to stop for good, issue 14 finding 15).
    old = await make_client(bridge, machine_id="dup")
    from zmqcross import AuthenticationError

    with pytest.raises(AuthenticationError, match="machine id 'dup' is in use by a live connection"):
        await make_client(bridge, machine_id="dup")
    assert old.connected and [c.id for c in bridge.clients] == ["dup"]
    await old.close()
    new = await make_client(bridge, machine_id="dup")  # the id is free once its holder is gone
    assert new.connected and [c.id for c in bridge.clients] == ["dup"]


async def test_same_key_takes_over_a_machine_id_and_dismisses_the_old_connection(
    keys, make_bridge, make_client
) -> None:
    bridge = await make_bridge(curve=keys.server())
    key = keys.client("k1")
    old = await make_client(bridge, machine_id="dup", curve=key)
    errors: list[BaseException] = []
    old.on("error", errors.append)
    new = await make_client(bridge, machine_id="dup", curve=key)  # a restarted process
    await wait_for(lambda: bool(errors), what="the old client to be dismissed")
    assert "give each process its own machine_id" in str(errors[0])
    assert not old.connected and new.connected
    assert [c.id for c in bridge.clients] == ["dup"]


async def test_goodbye_releases_at_once(bridge, make_client) -> None:
    reasons: list[str] = []
    bridge.on("disconnect", lambda client, reason: reasons.append(reason))
    client = await make_client(bridge, machine_id="m1")
    await client.request_shard_data()
    await client.close("maintenance")
    await wait_for(lambda: bool(reasons), what="disconnect")
    assert reasons == ["left: maintenance"]
    assert bridge.shard_map()["orphaned"] == {"m1": [0]}


async def test_oversized_request_fails_locally(make_bridge, make_client) -> None:
    small = Limits(max_frame_bytes=1024, max_message_bytes=4096, max_header_bytes=512)
    bridge = await make_bridge(limits=small)
    bridge.on("client_request", lambda r, c: "ok")
    client = await make_client(bridge, limits=small)
    with pytest.raises(MessageTooLarge, match="frame 1 is .* bytes; the limit is 1024"):
        await client.request("x" * 2000)
    assert await client.request("small") == "ok"


async def test_client_option_errors() -> None:
    with pytest.raises(ConfigurationError, match="auth_token must be the bridge's auth token"):
        Client(auth_token="")
    with pytest.raises(ConfigurationError, match="machine_id must not be empty"):
        Client(auth_token=TOKEN, machine_id="")
    client = Client(auth_token=TOKEN)
    with pytest.raises(SerializationError):
        await client.connect(initial_data={"bad": object()})
    with pytest.raises(ConnectionLost, match="the client is not running"):
        await Client(auth_token=TOKEN).request(1)
