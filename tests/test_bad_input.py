"""Malformed and hostile input from raw ZeroMQ sockets: each gets a clear answer, nothing breaks."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import orjson
import pytest
import zmq
import zmq.asyncio
from conftest import TOKEN, wait_for

from zmqcross import protocol as p
from zmqcross.protocol import Limits


class RawPeer:
    """A bare DEALER speaking (or not speaking) the protocol by hand."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.batched: list[p.Message] = []  # inner messages of a batch not yet returned
        self.batches = 0

    async def send(self, frames: list[bytes]) -> None:
        await self.sock.send_multipart(frames)

    async def receive(self, timeout: float = 5.0) -> p.Message:
        """The next message, a batch's inner messages one by one."""
        if not self.batched:
            msg = p.decode(await asyncio.wait_for(self.sock.recv_multipart(), timeout))
            if not isinstance(msg, p.Batch):
                return msg
            self.batches += 1
            self.batched = [p.decode(frames) for frames in msg.messages()]
        return self.batched.pop(0)

    async def nothing_within(self, seconds: float) -> bool:
        return not await self.sock.poll(int(seconds * 1000))

    async def register(self, machine_id: str = "raw", token: str = TOKEN) -> p.Message:
        await self.send(
            p.encode(
                p.Register(
                    id=1,
                    deadline=time.time() + 5,
                    protocol=p.PROTOCOL_VERSION,
                    token=token,
                    machine_id=machine_id,
                    agent="raw",
                )
            )
        )
        return await self.receive()

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
async def raw(bridge):
    peers: list[RawPeer] = []

    def make() -> RawPeer:
        peer = RawPeer(bridge.endpoint)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
async def witness(bridge, make_client):
    """A well-behaved client; every test checks it is still served after the abuse."""
    bridge.on("client_request", lambda request, client: {"ok": request.data})
    client = await make_client(bridge, machine_id="witness")

    async def still_served() -> None:
        assert await client.request("still?", timeout=5) == {"ok": "still?"}
        assert [c.id for c in bridge.clients if c.id == "witness"] == ["witness"]

    return still_served


def header(**fields: object) -> bytes:
    return orjson.dumps(fields)


BAD_FRAMES = [
    ("garbage bytes", [b"\x00\xffnot json at all"], None, "header frame is not valid JSON"),
    ("undecodable JSON", [b'{"type": "request", "id": 3,'], None, "header frame is not valid JSON"),
    ("not an object", [b'"register"'], None, "header frame must be a JSON object"),
    ("unknown type", [header(type="format_disk", id=41)], 41, "unknown message type 'format_disk'"),
    (
        "missing fields",
        [header(type="register", id=42, deadline=time.time() + 60)],
        42,
        "'register' message is missing the field 'protocol'",
    ),
    (
        "wrong field types",
        [header(type="request", id=43, deadline="tomorrow"), b"1"],
        43,
        "field 'deadline' must be a number, not 'tomorrow'",
    ),
    (
        "missing body",
        [header(type="request", id=44, deadline=time.time() + 60)],
        44,
        "carries 1 body frame(s), not 0",
    ),
    (
        "too many frames",
        [header(type="send")] + [b"x"] * (p.MAX_FRAMES + 1),
        None,
        "frames; the limit is 4096",
    ),
]


@pytest.mark.parametrize(
    ("frames", "reply_to", "needle"), [c[1:] for c in BAD_FRAMES], ids=[c[0] for c in BAD_FRAMES]
)
async def test_malformed_from_a_stranger(raw, witness, caplog, frames, reply_to, needle) -> None:
    caplog.set_level(logging.WARNING, logger="zmqcross.bridge")
    peer = raw()
    await peer.send(frames)
    answer = await peer.receive()
    assert isinstance(answer, p.ErrorReply) and answer.reply_to == reply_to
    assert answer.error.code in ("protocol", "too_large") and needle in answer.error.message
    assert "bad message from an unregistered peer at 127.0.0.1" in caplog.text
    await witness()


async def test_malformed_from_a_registered_client_is_logged_with_its_id(raw, witness, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="zmqcross.bridge")
    peer = raw()
    assert isinstance(await peer.register("sloppy"), p.Welcome)
    await peer.send([header(type="request", id=5, deadline=time.time() + 60, data="inline")])
    answer = await peer.receive()
    assert isinstance(answer, p.ErrorReply) and answer.reply_to == 5
    assert "bad message from 'sloppy'" in caplog.text
    await witness()


async def test_request_from_unregistered_peer_is_told_to_register(raw, witness) -> None:
    peer = raw()
    await peer.send(p.encode(p.Request(id=77, deadline=time.time() + 60, data=b'"hi"')))
    answer = await peer.receive()
    assert isinstance(answer, p.Reregister) and answer.reply_to == 77 and "register again" in answer.reason
    await witness()


async def test_wrong_token_from_a_raw_socket(raw, witness, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="zmqcross.bridge")
    answer = await raw().register(token="guess")
    assert isinstance(answer, p.ErrorReply) and answer.error.code == "authentication"
    assert answer.error.message == "wrong auth token: it does not match the bridge's auth_token"
    assert "refused registration of 'raw' (agent 'raw') from 127.0.0.1: wrong auth token" in caplog.text
    await witness()


async def test_bad_names_and_versions_are_refused(raw, witness) -> None:
    peer = raw()
    await peer.send(
        p.encode(
            p.Register(id=1, deadline=time.time() + 5, protocol=99, token=TOKEN, machine_id="m", agent="a")
        )
    )
    answer = await peer.receive()
    assert (
        isinstance(answer, p.ErrorReply)
        and "client speaks protocol 99; this bridge speaks 2" in answer.error.message
    )
    await peer.send(
        p.encode(
            p.Register(
                id=2, deadline=time.time() + 5, protocol=p.PROTOCOL_VERSION, token=TOKEN, machine_id="a\x00b", agent="a"
            )
        )
    )
    answer = await peer.receive()
    assert isinstance(answer, p.ErrorReply) and "unprintable characters" in answer.error.message
    await witness()


async def test_expired_request_is_dropped_not_run(raw, bridge, witness) -> None:
    ran: list[object] = []
    bridge.on("client_request", lambda request, client: ran.append(request.data))
    peer = raw()
    assert isinstance(await peer.register(), p.Welcome)
    await peer.send(p.encode(p.Request(id=9, deadline=time.time() - 1, data=b'"stale"')))
    assert await peer.nothing_within(0.3)
    await witness()
    assert "stale" not in ran


async def test_answers_to_requests_it_was_never_sent_are_ignored(raw, bridge, make_client, witness) -> None:
    victim = await make_client(bridge, machine_id="victim")

    @victim.on("bridge_request")
    async def slow(request):
        await asyncio.sleep(0.3)
        return "real answer"

    call = asyncio.create_task(bridge.request("q", client="victim"))
    peer = raw()
    assert isinstance(await peer.register("forger"), p.Welcome)
    for request_id in range(1, 10):  # guess the bridge's request id and answer in the victim's place
        await peer.send(p.encode(p.Reply(reply_to=request_id, data=b'"forged"')))
    assert await asyncio.wait_for(call, 5) == "real answer"
    await witness()


async def test_over_the_total_message_limit(make_bridge, make_client) -> None:
    limits = Limits(max_frame_bytes=1000, max_message_bytes=1500, max_header_bytes=500)
    bridge = await make_bridge(limits=limits)
    bridge.on("client_request", lambda request, client: "fine")
    good = await make_client(bridge, limits=limits, machine_id="good")
    peer = RawPeer(bridge.endpoint)
    try:
        await peer.send([header(type="send"), b"1" * 900, b"2" * 900])
        answer = await peer.receive()
        assert isinstance(answer, p.ErrorReply) and answer.error.code == "too_large"
        assert "the limit is 1500 (max_message_bytes)" in answer.error.message
        # A single frame over MAXMSGSIZE: libzmq drops that connection; no answer is possible.
        await peer.send([header(type="send"), b"x" * 5000])
        assert await peer.nothing_within(0.3)
        assert await good.request("after") == "fine"
    finally:
        peer.close()


async def test_bridge_survives_a_flood_of_garbage(raw, witness) -> None:
    peer = raw()
    for i in range(500):
        await peer.send([bytes([i % 256]) * (i % 50 + 1)])
    for _ in range(500):
        answer = await peer.receive()
        assert isinstance(answer, p.ErrorReply)
    assert await peer.nothing_within(0.2)  # one answer each, no more
    assert peer.batches >= 1  # answers to a burst came batched, and each was still there
    await witness()


# ---------------------------------------------------------------- limits enforced while receiving


class HostileDealer:
    """A plain (synchronous) DEALER that sends one huge message from a worker thread.

    pyzmq sends 500,000 frames at about a microsecond each; a thread keeps that off
    the event loop the bridge under test runs on.
    """

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(endpoint)

    async def send(self, frames: list[bytes], *, copy: bool = True) -> None:
        await asyncio.to_thread(self.sock.send_multipart, frames, copy=copy)

    async def receive(self, timeout: float = 30.0) -> p.Message:
        def wait() -> list[bytes]:
            if not self.sock.poll(int(timeout * 1000)):
                raise AssertionError(f"no answer within {timeout} s")
            return self.sock.recv_multipart()

        return p.decode(await asyncio.to_thread(wait))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class LoopWatch:
    """The longest time the event loop went without running a 1 ms timer."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.001)
            now = loop.time()
            self.longest = max(self.longest, now - last)
            last = now

    async def stop(self) -> float:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.longest


async def test_half_a_million_frames_are_refused_while_a_healthy_client_is_served(bridge, make_client) -> None:
    bridge.on("client_request", lambda request, client: {"ok": request.data})
    witness = await make_client(bridge, machine_id="witness")
    dropped: list[object] = []
    bridge.on("disconnect", lambda info, reason: dropped.append((info.id, reason)))
    witness.on("disconnect", lambda reason: dropped.append(("witness saw", reason)))
    errors_before = bridge.statistics().protocol_errors
    hostile = HostileDealer(bridge.endpoint)
    answered: list[int] = []
    stop = asyncio.Event()

    async def keep_asking() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            assert await witness.request(n, timeout=10) == {"ok": n}
            answered.append(n)
            await asyncio.sleep(0.02)

    asking = asyncio.create_task(keep_asking())
    try:
        await wait_for(lambda: len(answered) >= 2, what="the witness's first answers")
        watch = LoopWatch()
        await hostile.send([header(type="send")] + [b"x"] * 500_000)
        answer = await hostile.receive()
        longest_hold = await watch.stop()
        served_during = len(answered)
        await wait_for(lambda: len(answered) >= served_during + 3, what="answers after the attack")
    finally:
        stop.set()
        await asyncio.gather(asyncio.wait_for(asking, 15))
        hostile.close()
    assert isinstance(answer, p.ErrorReply) and answer.error.code == "too_large"
    assert answer.error.message == "message has 500001 frames; the limit is 4096"
    assert bridge.statistics().protocol_errors == errors_before + 1
    assert dropped == [] and [c.id for c in bridge.clients] == ["witness"]
    # The bridge reads and drops the frames in slices and lets the loop run between them
    # (about 5 ms a turn). Reading them all into a list first held it for over a second.
    assert longest_hold < 0.25, f"the event loop was held for {longest_hold:.3f} s"


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
async def test_a_message_over_the_byte_limit_is_not_kept(make_bridge, make_client) -> None:
    limits = Limits(max_frame_bytes=1 << 20, max_message_bytes=4 << 20, max_header_bytes=1024)
    bridge = await make_bridge(limits=limits)
    bridge.on("client_request", lambda request, client: "fine")
    good = await make_client(bridge, limits=limits, machine_id="good")
    errors_before = bridge.statistics().protocol_errors
    hostile = HostileDealer(bridge.endpoint)
    frame = b"x" * ((1 << 20) - 64)
    frames = 48
    sent_mib = frames * len(frame) / (1 << 20)
    try:
        # The sender holds one frame: copy=False sends the same buffer 48 times.
        base = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM (peak RSS) starts again from now
        await hostile.send([header(type="send")] + [frame] * frames, copy=False)
        answer = await hostile.receive()
        grown = _status_mib("VmHWM") - base
    finally:
        hostile.close()
    assert isinstance(answer, p.ErrorReply) and answer.error.code == "too_large"
    assert "; the limit is 4194304 (max_message_bytes)" in answer.error.message
    assert bridge.statistics().protocol_errors == errors_before + 1
    # libzmq makes a message readable only once all of it arrived, so it holds all 48 MiB
    # first (measured: as much RSS as the bytes sent). On top of that the bridge may keep
    # what is within the limit (4 MiB) until the frame that breaks it; nothing else. The
    # old receive path copied every frame into a list: about twice the message at the peak.
    assert grown < sent_mib + 4 + 12, f"peak RSS grew {grown:.0f} MiB for a {sent_mib:.0f} MiB message"
    assert await good.request("after") == "fine"
