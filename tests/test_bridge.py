"""Bridge and clients over real ZeroMQ sockets on loopback: messaging, requests, events."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import FAST, TOKEN, wait_for

import zmqcross
from zmqcross import (
    AccessPolicy,
    Bridge,
    ClientNotFound,
    ConfigurationError,
    ConnectionLost,
    PermissionDenied,
    RemoteError,
    RequestTimeout,
)


async def test_connect_event_and_client_list(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    seen = []
    bridge.on("connect", lambda client, data: seen.append((client.id, client.agent, data)))
    client = await make_client(bridge, machine_id="m1", agent="dashboard", initial_data={"version": 3})
    assert client.connected
    assert seen == [("m1", "dashboard", {"version": 3})]
    (info,) = bridge.clients
    assert info.id == "m1" and info.address == "127.0.0.1" and info.key is None
    # Without CURVE the token is the only credential: it grants every action.
    assert info.permissions == {"admin", "eval", "host", "request", "cache"} == client.permissions


async def test_requests_both_ways(make_bridge, make_client) -> None:
    bridge = await make_bridge()

    @bridge.on("client_request")
    async def answer(request, client):
        await request.reply({"got": request.data, "from": client.id})

    client = await make_client(bridge, machine_id="m1")
    client.on("bridge_request", lambda request: {"double": request.data * 2})
    assert await client.request({"x": 'a "quoted" \\ value'}) == {
        "got": {"x": 'a "quoted" \\ value'},
        "from": "m1",
    }
    assert await bridge.request(21, client="m1") == {"double": 42}
    assert await bridge.request(1, client=bridge.clients[0]) == {"double": 2}


async def test_returning_none_answers_none_and_no_handler_is_an_error(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    client = await make_client(bridge, machine_id="m1")
    with pytest.raises(RemoteError, match="the bridge has no 'client_request' handler"):
        await client.request("anyone?")
    bridge.on("client_request", lambda request, client: None)
    assert await client.request("anyone?") is None


async def test_remote_exception_arrives_with_its_traceback(make_bridge, make_client) -> None:
    bridge = await make_bridge()

    def broken_handler(request, client):
        return {"a": 1}[request.data]

    bridge.on("client_request", broken_handler)
    client = await make_client(bridge)
    with pytest.raises(RemoteError) as info:
        await client.request("missing-key")
    assert info.value.remote_type == "KeyError"
    assert "broken_handler" in (info.value.remote_traceback or "")
    assert "KeyError: 'missing-key'" in str(info.value)


async def test_unserialisable_answer_is_reported_not_hung(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    bridge.on("client_request", lambda request, client: {"oops": object()})
    client = await make_client(bridge)
    with pytest.raises(zmqcross.SerializationError, match="the request handler's answer cannot be sent"):
        await client.request(1)


async def test_messages_both_ways(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    got_at_bridge: asyncio.Queue = asyncio.Queue()
    bridge.on("client_message", lambda message, client: got_at_bridge.put_nowait((message.data, client.id)))
    a = await make_client(bridge, machine_id="a", agent="bot")
    b = await make_client(bridge, machine_id="b", agent="dashboard")
    inbox: dict[str, asyncio.Queue] = {"a": asyncio.Queue(), "b": asyncio.Queue()}
    a.on("bridge_message", lambda m: inbox["a"].put_nowait(m.data))
    b.on("bridge_message", lambda m: inbox["b"].put_nowait(m.data))

    await a.send({"hello": "bridge"})
    assert await asyncio.wait_for(got_at_bridge.get(), 5) == ({"hello": "bridge"}, "a")
    assert sorted(await bridge.send("all")) == ["a", "b"]
    assert await bridge.send("dash", filter=lambda c: c.agent == "dashboard") == ["b"]
    assert await asyncio.wait_for(inbox["a"].get(), 5) == "all"
    assert [await asyncio.wait_for(inbox["b"].get(), 5) for _ in range(2)] == ["all", "dash"]
    assert inbox["a"].empty()


async def test_request_to_client_by_id_and_agent(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    asker = await make_client(bridge, machine_id="asker", agent="dashboard")
    worker = await make_client(bridge, machine_id="worker", agent="bot")
    worker.on("bridge_request", lambda request: {"origin": request.origin, "data": request.data})
    assert await asker.request_to_client([1], client_id="worker") == {"origin": "asker", "data": [1]}
    assert await asker.request_to_client([2], agent="bot") == {"origin": "asker", "data": [2]}
    with pytest.raises(ClientNotFound, match="no connected client 'nobody'; connected: 'asker', 'worker'"):
        await asker.request_to_client(1, client_id="nobody")
    await make_client(bridge, machine_id="worker-2", agent="bot")
    with pytest.raises(ClientNotFound, match="2 clients have agent 'bot'"):
        await asker.request_to_client(1, agent="bot")
    with pytest.raises(ValueError, match="exactly one of client_id= or agent="):
        await asker.request_to_client(1)


async def test_relayed_request_fails_when_target_never_answers(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    asker = await make_client(bridge, machine_id="asker")
    slow = await make_client(bridge, machine_id="slow")

    @slow.on("bridge_request")
    async def never(request):
        await asyncio.sleep(30)

    # The bridge keeps back a tenth of what is left when the request reaches it (transit
    # time on a loaded machine makes that 0.27 s or a hair less).
    with pytest.raises(
        RequestTimeout, match=r"request relayed to client 'slow': no answer within 0\.2[67]\d* s"
    ):
        await asker.request_to_client(1, client_id="slow", timeout=0.3)
    with pytest.raises(RemoteError, match="client 'asker' has no 'bridge_request' handler"):
        await bridge.request(1, client="asker")


async def test_bridge_request_timeouts_and_unknown_clients(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    client = await make_client(bridge, machine_id="m1")

    @client.on("bridge_request")
    async def slow(request):
        await asyncio.sleep(30)

    with pytest.raises(RequestTimeout, match="request to client 'm1': no answer within 0.2 s"):
        await bridge.request("x", client="m1", timeout=0.2)
    with pytest.raises(ClientNotFound, match="no connected client 'ghost'"):
        await bridge.request("x", client="ghost")


async def test_peer_lost_mid_request_fails_fast(make_bridge, make_client) -> None:
    bridge = await make_bridge(**FAST)
    client = await make_client(bridge, machine_id="m1")
    started = asyncio.Event()

    @client.on("bridge_request")
    async def hang(request):
        started.set()
        await asyncio.sleep(30)

    call = asyncio.create_task(bridge.request("x", client="m1", timeout=20))
    await asyncio.wait_for(started.wait(), 5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await client.close()
    with pytest.raises(ConnectionLost, match="client 'm1' went away: left: closing"):
        await call
    assert loop.time() - t0 < 5


async def test_disconnect_event_on_silence(make_bridge, make_client) -> None:
    bridge = await make_bridge(**FAST)
    reasons: asyncio.Queue = asyncio.Queue()
    bridge.on("disconnect", lambda client, reason: reasons.put_nowait((client.id, reason)))
    client = await make_client(bridge, machine_id="quiet")
    # Stop this client's heartbeats without closing its socket: it goes silent, as a frozen process would.
    for task in client._tasks:
        task.cancel()
    client_id, reason = await asyncio.wait_for(reasons.get(), 5)
    assert client_id == "quiet" and reason.startswith("silent for") and "heartbeat_timeout is 0.5 s" in reason
    assert bridge.clients == ()


async def test_permissions_are_enforced(make_bridge, make_client) -> None:
    bridge = await make_bridge(permissions=AccessPolicy(agents={"viewer": []}))
    bridge.on("client_request", lambda request, client: "secret")
    viewer = await make_client(bridge, machine_id="v", agent="viewer")
    assert viewer.permissions == frozenset()
    with pytest.raises(PermissionDenied, match="client 'v' \\(agent 'viewer', key None\\) may not request"):
        await viewer.request("x")
    with pytest.raises(PermissionDenied):
        await viewer.request_to_client("x", client_id="v")
    bot = await make_client(bridge, machine_id="b")
    assert await bot.request("x") == "secret"


async def test_shard_data_for_machines_and_standby(make_bridge, make_client) -> None:
    bridge = await make_bridge(total_shards=8, shards_per_cluster=2, total_machines=2)
    m1 = await make_client(bridge, machine_id="m1")
    m2 = await make_client(bridge, machine_id="m2")
    spare = await make_client(bridge, machine_id="spare")
    d1, d2, d3 = [await c.request_shard_data() for c in (m1, m2, spare)]
    assert (d1.shard_list, d1.cluster_list, d1.total_shards) == (((0, 1), (2, 3)), (0, 1), 8)
    assert d2.shard_list == ((4, 5), (6, 7)) and d2.total_clusters == 4
    assert d3.standby and d3.shard_list == ()
    assert m1.hosting is not None and m1.hosting.cluster_list == (0, 1)
    assert await m1.request_shard_data() == d1  # asking again gives the same answer
    assert bridge.shard_map()["held"] == {"m1": [0, 1], "m2": [2, 3]}


async def test_eval_reaching_a_machine_without_clusters_names_it(make_bridge, make_client) -> None:
    bridge = await make_bridge(total_shards=4, shards_per_cluster=2, total_machines=1)
    idle = await make_client(bridge, machine_id="idle")
    await idle.request_shard_data()  # holds clusters 0 and 1, but no ClusterManager listens
    results = await bridge.broadcast_eval("1", return_exceptions=True, timeout=5)
    assert [type(r) for r in results] == [ClientNotFound, ClientNotFound]
    assert "client 'idle' runs no clusters (no client.listen(manager))" in results[0].message


async def test_shard_data_max_clusters(make_bridge, make_client) -> None:
    bridge = await make_bridge(total_shards=8, shards_per_cluster=1, total_machines=2)
    small = await make_client(bridge, machine_id="small")
    assert (await small.request_shard_data(max_clusters=1)).shard_list == ((0,),)
    with pytest.raises(ConfigurationError, match="max_clusters must be a positive integer"):
        await small.request_shard_data(max_clusters=0)


async def test_total_shards_auto_asks_the_discord_api(make_bridge, aiohttp_gateway) -> None:
    bridge = await make_bridge(
        total_shards="auto", token="Bot abc", api_base=aiohttp_gateway, total_machines=1
    )
    # Discord recommends 6; with max_concurrency 4 every bucket gets as many shards: 8.
    assert bridge.plan.total_shards == 8
    queue = bridge.identify_queue()
    assert queue is not None and queue["max_concurrency"] == 4
    assert queue["budget"]["remaining"] == 990 and queue["budget"]["reserve"] == 20
    with pytest.raises(ConfigurationError, match='total_shards="auto": GET .* answered 401'):
        await make_bridge(total_shards="auto", token="wrong", api_base=aiohttp_gateway)
    with pytest.raises(ConfigurationError, match="needs the bot token"):
        await make_bridge(total_shards="auto")
    with pytest.raises(ConfigurationError, match="gave a malformed session_start_limit"):
        await make_bridge(total_shards="auto", token="malformed", api_base=aiohttp_gateway)


async def test_a_bridge_with_a_token_paces_by_discords_limits_and_by_settings_without(
    make_bridge, aiohttp_gateway, caplog: pytest.LogCaptureFixture
) -> None:
    told = await make_bridge(total_shards=4, token="abc", api_base=aiohttp_gateway, max_concurrency=2)
    queue = told.identify_queue()
    assert queue is not None and queue["max_concurrency"] == 4  # Discord's word wins over the setting
    assert "Discord says 4 for this bot: using Discord's" in caplog.text
    # Discord unreachable or refusing: the bridge starts, pacing by its settings, and says so.
    refused = await make_bridge(total_shards=4, token="wrong", api_base=aiohttp_gateway, max_concurrency=2)
    queue = refused.identify_queue()
    assert queue is not None and queue["max_concurrency"] == 2 and queue["budget"] is None
    assert "cannot ask Discord for its IDENTIFY limits" in caplog.text
    plain = await make_bridge(total_shards=4, session_budget=50, session_reserve=5)
    queue = plain.identify_queue()
    assert queue is not None and queue["max_concurrency"] == 1
    assert queue["budget"] == {"total": 50, "remaining": 50, "reserve": 5, "reset_in": pytest.approx(86400, abs=5)}
    with pytest.raises(ConfigurationError, match="max_concurrency must be an integer >= 1"):
        Bridge(auth_token=TOKEN, max_concurrency=0)


@pytest.fixture
async def aiohttp_gateway():
    from aiohttp import web

    async def gateway_bot(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") == "Bot malformed":
            return web.json_response({"url": "ws://x", "shards": 6, "session_start_limit": {"total": "x"}})
        if request.headers.get("Authorization") != "Bot abc":
            return web.json_response({"message": "401: Unauthorized"}, status=401)
        limit = {"total": 1000, "remaining": 990, "reset_after": 3_600_000, "max_concurrency": 4}
        return web.json_response({"url": "ws://x", "shards": 6, "session_start_limit": limit})

    app = web.Application()
    app.router.add_get("/api/v10/gateway/bot", gateway_bot)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/api/v10"
    await runner.cleanup()


def test_bridge_option_errors() -> None:
    with pytest.raises(ConfigurationError, match="auth_token must be a non-empty string"):
        Bridge(auth_token="")
    with pytest.raises(ConfigurationError, match="port must be a TCP port number"):
        Bridge(auth_token=TOKEN, port=70000)
    with pytest.raises(ConfigurationError, match="shards_per_cluster must be a positive integer"):
        Bridge(auth_token=TOKEN, total_shards=4, shards_per_cluster=0)
    with pytest.raises(ConfigurationError, match="heartbeat_interval must be positive and shorter"):
        Bridge(auth_token=TOKEN, heartbeat_interval=5, heartbeat_timeout=1)
    with pytest.raises(ConfigurationError, match="claim_timeout must be longer than heartbeat_interval"):
        Bridge(auth_token=TOKEN, claim_timeout=0.5)
    with pytest.raises(ValueError, match="unknown event 'client_requests'; events are: assignment_unclaimed, client_message"):
        Bridge(auth_token=TOKEN).on("client_requests", print)


async def test_port_in_use_is_a_clear_error(make_bridge) -> None:
    first = await make_bridge()
    with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1 ports {first.port}/"):
        await make_bridge(port=first.port, pub_port=0)


async def test_non_loopback_without_curve_warns(make_bridge, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="zmqcross.bridge")
    await make_bridge(host="0.0.0.0")
    assert "WITHOUT CURVE" in caplog.text


async def test_handler_errors_reach_the_error_event(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    errors: list[BaseException] = []
    bridge.on("error", errors.append)

    @bridge.on("connect")
    async def bad_connect_handler(client, data):
        raise RuntimeError("boom in a connect handler")

    client = await make_client(bridge)
    bridge.on("client_request", lambda r, c: "still serving")
    await wait_for(lambda: bool(errors), what="the error event")
    assert str(errors[0]) == "boom in a connect handler"
    assert await client.request(1) == "still serving"


async def test_statistics(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    bridge.on("client_request", lambda r, c: 1)
    client = await make_client(bridge, machine_id="m1")
    await client.request(0)
    stats = bridge.statistics()
    assert stats.clients == 1 and stats.messages_in >= 2 and stats.open_requests == 0
    cstats = client.statistics()
    assert cstats.state == "ready" and cstats.machine_id == "m1" and cstats.epoch == bridge.epoch


async def test_services_route_by_name_and_check_their_permission(make_bridge, make_client) -> None:
    bridge = await make_bridge(permissions=AccessPolicy(agents={"viewer": ["request"]}))
    bridge.add_service(
        "kv", lambda request, client: {"service_got": request.data, "from": client.id}, action="cache"
    )
    client = await make_client(bridge, machine_id="m1")
    assert await client.call_service("kv", [1]) == {"service_got": [1], "from": "m1"}
    with pytest.raises(ClientNotFound, match="the bridge runs no 'nope' service"):
        await client.call_service("nope", 1)
    viewer = await make_client(bridge, machine_id="v", agent="viewer")
    with pytest.raises(PermissionDenied, match="may not cache"):
        await viewer.call_service("kv", 1)
    with pytest.raises(ConfigurationError, match="already has a 'kv' service"):
        bridge.add_service("kv", print)


async def test_reshard_service_needs_admin(make_bridge, make_client) -> None:
    bridge = await make_bridge(permissions=AccessPolicy(agents={"dashboard": ["request"]}))
    viewer = await make_client(bridge, machine_id="viewer", agent="dashboard")
    with pytest.raises(PermissionDenied, match="may not admin"):
        await viewer.reshard(total_shards=8)
    ops = await make_client(bridge, machine_id="ops", agent="ops")
    answer = await ops.reshard(total_shards=8)
    assert answer == {"plan_version": bridge.plan.version, "total_shards": 8, "total_clusters": 4}
    with pytest.raises(ConfigurationError, match="total_shards must be a positive integer"):
        await ops.reshard(total_shards=0)
    status = await ops.fleet_status()
    assert status.total_shards == 8 and [m.id for m in status.machines] == ["viewer", "ops"]


async def test_observer_sees_every_answer_with_its_outcome(make_bridge, make_client) -> None:
    bridge = await make_bridge(permissions=AccessPolicy(agents={"viewer": []}))
    seen: list[tuple[str, str]] = []
    bridge.observe(lambda kind, outcome, seconds: seen.append((kind, outcome)) if seconds >= 0 else None)
    bridge.on("client_request", lambda request, client: 1 / request.data)
    client = await make_client(bridge, machine_id="m1")
    assert await client.request(1) == 1.0
    with pytest.raises(RemoteError):
        await client.request(0)
    viewer = await make_client(bridge, machine_id="v", agent="viewer")
    with pytest.raises(PermissionDenied):
        await viewer.request(1)
    with pytest.raises(zmqcross.BroadcastEvalError):
        await client.broadcast_eval("1")  # no machine runs any cluster: every slot fails
    assert seen == [
        ("request", "ok"),
        ("request", "remote"),
        ("request", "permission_denied"),
        ("eval", "error"),
    ]


async def test_answers_to_a_burst_leave_batched_and_each_arrives(bridge, make_client) -> None:
    bridge.on("client_request", lambda request, client: {"echo": request.data})
    client = await make_client(bridge)
    before = bridge.statistics()
    results = await asyncio.gather(*(client.request(i) for i in range(300)))
    after = bridge.statistics()
    assert results == [{"echo": i} for i in range(300)]  # every answer, to its own request
    assert after.messages_out - before.messages_out == 300  # counted as messages, not sends
    assert after.sends - before.sends < 100  # but they left in batches
    assert await client.request("after") == {"echo": "after"}
