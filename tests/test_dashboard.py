"""The web dashboard: its JSON, the `zmqcross dashboard` command, and the page in a real browser.

The fleet is real: an offline gateway and a bridge in this process, two bots/cluster.py
machines with two discord.py clusters each, and bots/dashboard.py serving the page. The
browser is headless Chromium, driven by its command line (--dump-dom, --screenshot); the
screenshots land in benchmarks/results/ (ignored by git).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from conftest import IDENTIFY_WINDOW, free_port
from fleetkit import ROOT, TOKEN, Proc, Processes, fleet_env

from zmqcross import AccessPolicy, Bridge, Client
from zmqcross.dashboard import Dashboard, LatencyWindow, percentile
from zmqcross.gateway import GatewayServer, guild_id, shard_of
from zmqcross.status import ClusterStatus, FleetStatus, MachineStatus, summarize

pytestmark = pytest.mark.timeout(120)
# One event loop for the module: the fleet fixture outlives each test.
module_loop = pytest.mark.asyncio(loop_scope="module")

GUILDS = 64
TOTAL_SHARDS = 8  # 4 clusters of 2 shards, 2 clusters per machine
LOOKED_UP = guild_id(9)


# --------------------------------------------------------------------------- pure parts


def test_percentile_is_a_measured_value() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)
    window = LatencyWindow(3)
    for seconds in (0.010, 0.001, 0.002, 0.003):  # the first falls out
        window.add(seconds)
    assert len(window) == 3 and window.size == 3
    assert window.ms(0.5) == pytest.approx(2.0) and window.last_ms == pytest.approx(3.0)


def _cluster(cid: int, state: str, guilds: int | None, restarts: int = 0) -> ClusterStatus:
    return ClusterStatus(cid, (2 * cid, 2 * cid + 1), 100 + cid, state, guilds, restarts, 0.0, 1.0, 0.0, None)


def test_summary_counts_what_an_operator_reads_first() -> None:
    machines = (
        MachineStatus("m1", "bot", None, 0.0, "v1", False, False, False, (_cluster(0, "ready", 10, 2),)),
        # mid-roll: cluster 1's old process still serves; it must not count twice
        MachineStatus(
            "m2",
            "bot",
            None,
            0.0,
            "v0",
            True,
            False,
            False,
            (_cluster(1, "starting", None), _cluster(1, "retiring", 7)),
        ),
        MachineStatus("m3", "bot", None, 0.0, None, False, True, False, ()),
        MachineStatus("dash", "dashboard", None, 0.0, None, False, False, False, ()),
    )
    status = FleetStatus("v1", 6, 3, machines, ("m3",), (2,), 0.0)
    summary = summarize(status)
    assert (summary.machines, summary.standby, summary.stale) == (3, 1, 1)
    assert (summary.clusters, summary.ready, summary.guilds, summary.restarts) == (2, 1, 10, 2)
    assert summary.shards == 4  # shards 0-3: cluster 1's shards counted once
    assert summary.states == {"ready": 1, "starting": 1, "retiring": 1}
    assert summary.down == (1, 2) and summary.unassigned == (2,)


# --------------------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    gateway: GatewayServer
    bridge: Bridge
    procs: Processes
    client: Client
    dashboard: Proc
    url: str


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def wait_fleet_json(url: str, ready: int, machines: int, timeout: float = 40.0) -> dict[str, Any]:
    """The dashboard's /api/fleet once it shows ``ready`` clusters on ``machines`` machines."""
    end = time.monotonic() + timeout
    snapshot: Any = None
    while time.monotonic() < end:
        _, snapshot = await get_json(url + "api/fleet")
        summary = snapshot["summary"]
        answered = [c["answered"] for c in snapshot["latency"]["clusters"]]
        if (
            summary
            and (summary["ready"], summary["machines"]) == (ready, machines)
            and (ready < 4 or summary["guilds"] == GUILDS)
            and answered.count(True) == ready
        ):
            return snapshot
        await asyncio.sleep(0.2)
    raise AssertionError(
        f"the dashboard never showed {ready} ready clusters on {machines} machines: {snapshot}"
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet() -> AsyncIterator[Fleet]:
    gateway = GatewayServer(guilds=GUILDS, identify_window=IDENTIFY_WINDOW)
    await gateway.start()
    port = free_port()
    bridge = Bridge(
        auth_token=TOKEN,
        port=port,
        pub_port=port + 1,
        total_shards=TOTAL_SHARDS,
        shards_per_cluster=2,
        total_machines=2,
        identify_window=IDENTIFY_WINDOW,
    )
    await bridge.start()
    procs = Processes(fleet_env(gateway.api_base, port, ZMQCROSS_TOTAL_SHARDS=str(TOTAL_SHARDS)))
    client = Client(auth_token=TOKEN, port=port, pub_port=port + 1, agent="dashboard", machine_id="tester")
    try:
        procs.machine("machine-1"), procs.machine("machine-2")
        web_port = free_port()
        dashboard = Proc(
            "dashboard",
            ROOT / "bots" / "dashboard.py",
            {**procs.env, "ZMQCROSS_DASHBOARD_PORT": str(web_port), "ZMQCROSS_DASHBOARD_ID": "web"},
        )
        procs.started.append(dashboard)
        line = await dashboard.wait_line("[dashboard] serving", timeout=30)
        url = line.split("serving ", 1)[1].strip()
        assert url == f"http://127.0.0.1:{web_port}/"
        await client.connect()
        await wait_fleet_json(url, ready=4, machines=2)
        yield Fleet(gateway, bridge, procs, client, dashboard, url)
    finally:
        await procs.stop_all()
        await client.close()
        await bridge.close()
        await gateway.close()


@module_loop
async def test_fleet_json_matches_the_fleet(fleet: Fleet) -> None:
    status, snap = await get_json(fleet.url + "api/fleet")
    assert status == 200 and snap["error"] is None
    summary = snap["summary"]
    assert summary["machines"] == 2 and summary["clusters"] == 4 and summary["ready"] == 4
    assert summary["shards"] == TOTAL_SHARDS and summary["guilds"] == fleet.gateway.guild_count == GUILDS
    assert summary["down"] == [] and summary["unassigned"] == []
    clients = {m["id"]: m for m in snap["fleet"]["machines"]}
    assert {"machine-1", "machine-2", "web", "tester"} <= set(clients)
    held = sorted(tuple(c["id"] for c in clients[m]["clusters"]) for m in ("machine-1", "machine-2"))
    assert held == [(0, 1), (2, 3)]  # which machine gets which pair depends on who registered first
    # the same numbers the bridge itself reports
    direct = summarize(await fleet.client.fleet_status())
    assert (direct.machines, direct.ready, direct.guilds) == (2, 4, GUILDS)
    # eval latency: every cluster answered, and the window has samples with a p50
    latency = snap["latency"]
    assert [c["answered"] for c in latency["clusters"]] == [True] * 4
    assert latency["samples"] >= 1 and 0 < latency["p50_ms"] <= latency["p99_ms"] < 5000


@module_loop
async def test_guild_lookup_answers_and_errors(fleet: Fleet) -> None:
    status, answer = await get_json(fleet.url + f"api/guild/{LOOKED_UP}")
    shard = shard_of(LOOKED_UP, TOTAL_SHARDS)
    assert status == 200 and answer["ok"]
    assert answer["answer"]["found"] and answer["answer"]["shard"] == shard
    assert answer["answer"]["cluster"] == shard // 2
    assert str(LOOKED_UP) in answer["guild_id"]

    status, answer = await get_json(fleet.url + "api/guild/not-a-guild")
    assert status == 400 and not answer["ok"]
    assert answer["error"]["message"] == "'not-a-guild' is not a guild id"


@module_loop
async def test_page_in_headless_chromium_shows_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    chromium = find_chromium()
    dom = await dump_dom(chromium, fleet.url + f"?guild={LOOKED_UP}", tmp_path)
    page = parse(dom)
    assert page.by_id("body")["data-loaded"] == "true"
    assert int(page.by_id("body")["data-refreshes"]) >= 1
    assert page.value("total-machines") == "2"
    assert page.value("total-clusters") == "4" and page.value("ready-clusters") == "4"
    assert page.value("total-shards") == str(TOTAL_SHARDS) == page.value("plan-shards")
    assert page.value("total-guilds") == str(fleet.gateway.guild_count)
    assert page.value("total-restarts") == "0"
    assert float(page.value("eval-p50")) > 0
    rows = page.all("tr", "cluster")
    assert sorted(int(r["data-cluster"]) for r in rows) == [0, 1, 2, 3]
    assert all(r["data-state"] == "ready" and r["data-answered"] == "true" for r in rows)
    assert sum(int(r["data-guilds"]) for r in rows) == GUILDS
    assert {r["data-machine"] for r in rows} == {"machine-1", "machine-2"}
    assert "all 4 clusters ready" in page.text("alerts")

    shard = shard_of(LOOKED_UP, TOTAL_SHARDS)
    result = page.by_id("guild-result")
    assert result["data-status"] == "ok", page.text("guild-result")
    assert (result["data-shard"], result["data-cluster"]) == (str(shard), str(shard // 2))
    assert f"from cluster {shard // 2} (shard {shard})" in page.text("guild-result")
    assert '"found": true' in page.text("guild-answer")

    await screenshot(chromium, fleet.url + f"?guild={LOOKED_UP}", "dashboard.png", tmp_path)


@module_loop
async def test_the_shard_grid_shows_every_shard_and_marks_a_down_one(fleet: Fleet, tmp_path: Path) -> None:
    page = parse(await dump_dom(find_chromium(), fleet.url, tmp_path))
    cells = page.all("span", "shard")
    assert [c["data-shard"] for c in cells] == [str(i) for i in range(TOTAL_SHARDS)]
    assert {c["data-state"] for c in cells} == {"ready"}
    assert all(re.search(r"^shard \d: ready, \d+ ms, cluster \d on machine-\d$", c["title"]) for c in cells), cells
    fleet.gateway.refuse_shard(5)  # it cannot come back...
    try:
        assert await fleet.gateway.disconnect_shard(5) == 1  # ...once its connection drops
        # Wait on the dashboard's own snapshot (it probes once a second), not on a fresh
        # fleet_status: the page renders what the dashboard last saw.
        end = time.monotonic() + 10
        while True:
            _, snapshot = await get_json(fleet.url + "api/fleet")
            rows = [r for m in snapshot["fleet"]["machines"] for c in m["clusters"] for r in c["shard_health"]]
            row = next(r for r in rows if r[0] == 5)
            if row[1] == "disconnected" and row[6] >= 1.5:
                break
            assert time.monotonic() < end, rows
            await asyncio.sleep(0.2)
        page = parse(await dump_dom(find_chromium(), fleet.url + "?shard_alert=1", tmp_path))
        states = {c["data-shard"]: c["data-state"] for c in page.all("span", "shard")}
        assert states == {str(i): "disconnected" if i == 5 else "ready" for i in range(TOTAL_SHARDS)}
        assert re.search(r"shard 5 is DOWN \(disconnected for \d+ s\) on cluster 2 on machine-\d", page.text("alerts"))
        await screenshot(find_chromium(), fleet.url + "?shard_alert=1", "dashboard-shard-down.png", tmp_path)
    finally:
        fleet.gateway.refuse_shard(5, False)  # it resumes; the next test starts from a whole fleet
    end = time.monotonic() + 20
    while not all(s.up for m in (await fleet.client.fleet_status()).machines for c in m.clusters for s in c.shard_health):
        assert time.monotonic() < end, "shard 5 did not come back"
        await asyncio.sleep(0.2)


@module_loop
async def test_a_lost_machine_shows_its_clusters_down(fleet: Fleet, tmp_path: Path) -> None:
    # Last in this module: it takes machine-2 away for good.
    lost = sorted(
        c.id for m in (await fleet.client.fleet_status()).machines if m.id == "machine-2" for c in m.clusters
    )
    machine_2 = next(p for p in fleet.procs.started if p.name == "machine-2")
    machine_2.signal(signal.SIGKILL)
    await machine_2.wait_exit()
    snap = await wait_fleet_json(fleet.url, ready=2, machines=1)
    assert snap["summary"]["unassigned"] == lost and snap["summary"]["down"] == lost
    assert [c["id"] for c in snap["latency"]["clusters"] if not c["answered"]] == lost

    page = parse(await dump_dom(find_chromium(), fleet.url, tmp_path))
    assert page.value("total-machines") == "1"
    assert page.value("ready-clusters") == "2" and page.value("total-clusters") == "4"
    alerts = page.text("alerts")
    assert f"cluster {lost[0]} is DOWN: no machine runs it" in alerts
    assert f"cluster {lost[1]} did not answer the eval" in alerts
    down = [r for r in page.all("tr", "cluster") if r["data-state"] == "down"]
    assert sorted(int(r["data-cluster"]) for r in down) == lost
    await screenshot(find_chromium(), fleet.url, "dashboard-down.png", tmp_path)


# --------------------------------------------------------------------------- without clusters


@module_loop
async def test_dashboard_command_serves_an_empty_fleet() -> None:
    """`zmqcross dashboard` against a bridge with no machine: every cluster shows down."""
    port = free_port()
    async with Bridge(auth_token=TOKEN, port=port, total_shards=4, shards_per_cluster=2) as bridge:
        env = {**fleet_env("http://unused", bridge.port), "ZMQCROSS_DASHBOARD_ID": "cli-dash"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zmqcross",
            "dashboard",
            "--port",
            "0",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            found = re.search(r"dashboard: serving (http://\S+/)", line)
            assert found, line + (await proc.stderr.read()).decode()
            url = found.group(1)
            status, snap = await get_json(url + "api/fleet")
            assert status == 200 and snap["dashboard"]["id"] == "cli-dash"
            assert snap["summary"]["machines"] == 0 and snap["summary"]["unassigned"] == [0, 1]
            assert snap["latency"]["samples"] == 0 and snap["latency"]["p50_ms"] is None
            status, answer = await get_json(url + f"api/guild/{LOOKED_UP}")
            assert status == 502 and not answer["ok"] and answer["error"]["message"]
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                assert response.status == 200 and response.content_type == "text/html"
                assert 'id="total-guilds"' in await response.text()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 20)
        assert code == 0, (await proc.stderr.read()).decode()


@module_loop
async def test_dashboard_in_process_reports_a_refused_eval_and_a_lost_bridge() -> None:
    port = free_port()
    policy = AccessPolicy(agents={"dashboard": ["request"]})
    bridge = Bridge(auth_token=TOKEN, port=port, total_shards=2, permissions=policy)
    client = Client(auth_token=TOKEN, port=port, agent="dashboard", machine_id="d")
    async with bridge, client, Dashboard(client, port=0, interval=0.2) as dashboard:
        snap = await dashboard.wait_snapshot()
        assert snap["error"] is None and snap["summary"]["unassigned"] == [0, 1]
        assert snap["latency"]["error"]["code"] == "permission_denied"
        status, same = await get_json(dashboard.url + "api/fleet")
        assert status == 200 and same["latency"]["error"]["type"] == "PermissionDenied"

        # The bridge goes away: the next probes say so at once instead of waiting out timeouts.
        await bridge.close()

        def lost() -> bool:
            snap = dashboard.snapshot()
            return snap is not None and (snap["error"] or {}).get("code") == "connection_lost"

        end = time.monotonic() + 5
        while not lost() and time.monotonic() < end:
            await asyncio.sleep(0.05)
        snap = dashboard.snapshot()
        assert lost(), snap
        assert snap["fleet"] is None and snap["latency"]["error"]["code"] == "connection_lost"


async def get_with(url: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.text()


@module_loop
async def test_foreign_hosts_and_origins_are_refused() -> None:
    # DNS rebinding: a page on evil.example re-resolves its name to 127.0.0.1 and reads the
    # dashboard as its own origin; the browser then sends Host: evil.example. A page that
    # calls the dashboard cross-origin sends its own Origin. Neither may read the fleet or
    # start a guild request.
    port = free_port()
    asked: list[str] = []
    bridge = Bridge(auth_token=TOKEN, port=port, total_shards=2)
    bridge.observe(lambda kind, outcome, seconds: asked.append(kind))
    client = Client(auth_token=TOKEN, port=port, agent="dashboard", machine_id="d")
    dashboard = Dashboard(client, port=0, interval=0.2, allowed_hosts=["dash.internal"])
    async with bridge, client, dashboard:
        await dashboard.wait_snapshot()
        here = f"127.0.0.1:{dashboard.port}"
        fleet, guild = dashboard.url + "api/fleet", dashboard.url + f"api/guild/{LOOKED_UP}"
        for url in (dashboard.url, fleet, guild):
            status, body = await get_with(url, Host=f"evil.example:{dashboard.port}")
            assert status == 403 and "evil.example" in body and "machines" not in body
            status, body = await get_with(url, Origin="http://evil.example")
            assert status == 403 and "http://evil.example" in body
        for origin in ("null", f"http://localhost:{dashboard.port}", "http://127.0.0.1:1"):  # not this origin
            assert (await get_with(fleet, Origin=origin))[0] == 403, origin
        assert (await get_with(fleet, **{"Sec-Fetch-Site": "cross-site"}))[0] == 403
        assert "guild_request" not in asked  # refused before any work

        # What the page and its operator send still works.
        assert (await get_with(fleet))[0] == 200
        same = {"Origin": f"http://{here}", "Sec-Fetch-Site": "same-origin"}
        assert (await get_with(fleet, **same))[0] == 200
        for host in (f"localhost:{dashboard.port}", "localhost", f"[::1]:{dashboard.port}", "dash.internal"):
            assert (await get_with(fleet, Host=host))[0] == 200, host
        navigate = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
        assert (await get_with(dashboard.url, **navigate))[0] == 200  # a link to the page from elsewhere
        assert (await get_with(guild, **same))[0] == 502  # let through: no machine runs the guild
        assert "guild_request" in asked


@module_loop
async def test_a_dashboard_bound_beyond_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    client = Client(auth_token=TOKEN, port=free_port(), agent="dashboard", machine_id="d")
    caplog.set_level("WARNING", logger="zmqcross.dashboard")
    async with Dashboard(client, host="127.0.0.1", port=0, interval=60):
        pass
    assert not [r for r in caplog.records if r.name == "zmqcross.dashboard"]
    async with Dashboard(client, host="0.0.0.0", port=0, interval=60) as dashboard:
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("every interface" in w and "0.0.0.0" in w for w in warnings), warnings
        # reached by the machine's address, which no rebinding page can use as its name
        by_address = f"10.1.2.3:{dashboard.port}"
        assert (await get_with(f"http://127.0.0.1:{dashboard.port}/", Host=by_address))[0] == 200
    await client.close()


# --------------------------------------------------------------------------- chromium


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


async def run_chromium(chromium: str, args: list[str], tmp_path: Path) -> str:
    profile = tmp_path / "chromium-profile"
    proc = await asyncio.create_subprocess_exec(
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=8000",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def dump_dom(chromium: str, url: str, tmp_path: Path) -> str:
    return await run_chromium(chromium, ["--dump-dom", url], tmp_path)


SCREENSHOTS = ROOT / "benchmarks" / "results"
"""Where the screenshots go: git ignores it, and it outlives pytest's temporary folders."""


async def screenshot(chromium: str, url: str, name: str, tmp_path: Path) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    path.unlink(missing_ok=True)
    await run_chromium(chromium, [f"--screenshot={path}", "--window-size=1280,900", url], tmp_path)
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


class Page(HTMLParser):
    """Elements of a DOM dump: attributes by id, text by id, and elements by tag and class."""

    VOID = frozenset({"meta", "link", "input", "br", "img", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = {"tag": tag, "attrs": {k: v or "" for k, v in attrs}, "text": []}
        self.elements.append(node)
        if tag not in self.VOID:
            self._open.append(node)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for node in self._open:
            node["text"].append(data)

    def by_id(self, ident: str) -> dict[str, str]:
        if ident == "body":
            return next(e["attrs"] for e in self.elements if e["tag"] == "body")
        return self._node(ident)["attrs"]

    def _node(self, ident: str) -> dict[str, Any]:
        for element in self.elements:
            if element["attrs"].get("id") == ident:
                return element
        raise AssertionError(f"no element #{ident} in the page")

    def value(self, ident: str) -> str:
        return self.by_id(ident)["data-value"]

    def text(self, ident: str) -> str:
        return "".join(self._node(ident)["text"])

    def all(self, tag: str, cls: str) -> list[dict[str, str]]:
        return [
            e["attrs"]
            for e in self.elements
            if e["tag"] == tag and cls in e["attrs"].get("class", "").split()
        ]


def parse(dom: str) -> Page:
    page = Page()
    page.feed(dom)
    return page
