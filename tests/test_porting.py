"""Porting a discord.py bot: each mistake stops its cluster within seconds, with the fix in the message.

Real cluster processes run real discord.py against the offline gateway. A mistake in the
bot file's wiring (a ``commands.Bot``, the wrong shards, no ``ClusterClient``) fails the
cluster at once and is never restarted; a crash (an import error, ``setup_hook``) is
restarted up to the cap, shown in status with its traceback's last lines, and does not keep
the other clusters from starting. A machine with ``--exit-on-failed-cluster`` then exits 1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import IDENTIFY_WINDOW, free_port

from zmqcross import Bridge, ClusterManager, ClusterStatus, IdentifyParams, RestartPolicy
from zmqcross.gateway import GatewayServer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
FIX = "commands.AutoShardedBot(..., shard_ids=list(data.shard_list), shard_count=data.total_shards)"
SOON = 30.0  # seconds: two cold discord.py imports on a busy 2-core machine, with room to spare

HEAD = """
import discord
from discord.ext import commands

import zmqcross

data = zmqcross.cluster_data()
intents = discord.Intents.default()
"""

# discord.py's examples/basic_bot.py (2.x), unmodified but for the comments.
BASIC_BOT = '''
import discord
from discord.ext import commands
import random

description = """An example bot to showcase the discord.ext.commands extension
module.

There are a number of utility commands being showcased here."""

intents = discord.Intents.default()
intents.members = True
intents.message_content = True

bot = commands.Bot(command_prefix='?', description=description, intents=intents)


@bot.event
async def on_ready():
    assert bot.user is not None
    print(f'Logged in as {bot.user} (ID: {bot.user.id})')
    print('------')


@bot.command()
async def add(ctx, left: int, right: int):
    """Adds two numbers together."""
    await ctx.send(left + right)


@bot.command()
async def roll(ctx, dice: str):
    """Rolls a dice in NdN format."""
    try:
        rolls, limit = map(int, dice.split('d'))
    except Exception:
        await ctx.send('Format has to be in NdN!')
        return

    result = ', '.join(str(random.randint(1, limit)) for r in range(rolls))
    await ctx.send(result)


@bot.command(description='For when you wanna settle the score some other way')
async def choose(ctx, *choices: str):
    """Chooses between multiple choices."""
    await ctx.send(random.choice(choices))


@bot.command()
async def joined(ctx, member: discord.Member):
    """Says when a member joined."""
    await ctx.send(f'{member.name} joined {discord.utils.format_dt(member.joined_at)}')


bot.run('token')
'''

SETUP_HOOK_CRASH = (
    HEAD
    + """
class Bot(commands.AutoShardedBot):
    async def setup_hook(self):
        if data.cluster_id == 0:
            raise RuntimeError("could not load the extension cogs.music")


bot = Bot(command_prefix="!", intents=intents, shard_ids=list(data.shard_list), shard_count=data.total_shards)
bot.cluster = zmqcross.ClusterClient(bot)
bot.run("offline-token", log_handler=None)
"""
)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway() -> AsyncIterator[GatewayServer]:
    server = GatewayServer(guilds=8, identify_window=IDENTIFY_WINDOW)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def write_bot(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "bot.py"
    path.write_text(textwrap.dedent(source))
    return path


def manager_for(
    bot: Path, gateway: GatewayServer, *, clusters: int = 1, max_restarts: int = 2
) -> ClusterManager:
    return ClusterManager(
        bot,
        total_shards=2,
        shard_list=[[0, 1]] if clusters == 1 else [[0], [1]],
        env={"ZMQCROSS_DISCORD_API": gateway.api_base, "ZMQCROSS_LOG_LEVEL": "WARNING"},
        spawn_delay=0,
        restarts=RestartPolicy(max_restarts=max_restarts, interval=60),
        identify=IdentifyParams(window=IDENTIFY_WINDOW),
    )


async def wait_until(check: Callable[[], bool], timeout: float, what: Callable[[], object]) -> float:
    """Seconds until ``check()`` held; fails with ``what()`` after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what()}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def failed_at_once(manager: ClusterManager, gateway: GatewayServer) -> ClusterStatus:
    """Spawn a one-cluster manager whose bot file has a wiring mistake; its failed status."""
    identifies = gateway.statistics().identifies
    try:
        await manager.spawn()
        await wait_until(lambda: manager.clusters[0].state == "failed", SOON, lambda: manager.clusters)
        await asyncio.sleep(1.5)  # long enough for a restart to show, were there one
        (status,) = manager.clusters
        assert status.state == "failed" and status.restarts == 0 and status.pid is None
        assert gateway.statistics().identifies == identifies  # refused before any IDENTIFY
        assert status.last_error is not None
        first, message = status.last_error.splitlines()  # the message alone: it names the fix
        assert (
            first == "cluster 0 is not restarted: a restart cannot fix a mistake in the bot file; last error:"
        )
        assert message.startswith("ConfigurationError: cluster 0: ")
        assert ClusterStatus.from_json(status.to_json()) == status  # carried on the wire as it is
        return status
    finally:
        await manager.close()


async def test_a_commands_bot_is_refused_with_the_fix(tmp_path: Path, gateway: GatewayServer) -> None:
    bot = write_bot(
        tmp_path,
        HEAD
        + """
bot = commands.Bot(command_prefix="!", intents=intents, shard_ids=list(data.shard_list), shard_count=data.total_shards)
bot.cluster = zmqcross.ClusterClient(bot)
bot.run("offline-token", log_handler=None)
""",
    )
    status = await failed_at_once(manager_for(bot, gateway), gateway)
    assert (
        "ConfigurationError: cluster 0: ClusterClient needs an AutoShardedClient, not a Bot"
        in status.last_error
    )
    assert "each holding every guild" in status.last_error and FIX in status.last_error
    assert "restart cannot fix a mistake in the bot file" in status.last_error


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("", "the bot has no shard_ids, so discord.py would run every shard in every cluster"),
        (
            "shard_ids=[0], shard_count=2",
            "the bot has shard_ids=[0], shard_count=2, but cluster 0 runs shards [0, 1] of 2",
        ),
        ("shard_ids=[0, 1], shard_count=4", "shard_count=4, but cluster 0 runs shards [0, 1] of 2"),
    ],
)
async def test_wrong_shards_are_refused_with_the_fix(
    tmp_path: Path, gateway: GatewayServer, arguments: str, expected: str
) -> None:
    bot = write_bot(
        tmp_path,
        HEAD
        + f"""
bot = commands.AutoShardedBot(command_prefix="!", intents=intents, {arguments})
bot.cluster = zmqcross.ClusterClient(bot)
bot.run("offline-token", log_handler=None)
""",
    )
    status = await failed_at_once(manager_for(bot, gateway), gateway)
    assert expected in status.last_error and FIX in status.last_error


async def test_a_bot_without_cluster_client_is_stopped_before_it_connects(
    tmp_path: Path, gateway: GatewayServer
) -> None:
    status = await failed_at_once(manager_for(write_bot(tmp_path, BASIC_BOT), gateway), gateway)
    assert "the bot was about to connect to Discord without creating a ClusterClient" in status.last_error
    assert "Add bot.cluster = zmqcross.ClusterClient(bot) before bot.run(...)" in status.last_error
    assert FIX in status.last_error


async def test_a_bot_file_that_ends_without_cluster_client_says_so(
    tmp_path: Path, gateway: GatewayServer
) -> None:
    bot = write_bot(tmp_path, HEAD + "\nprint('defined a bot, ran nothing')\n")
    status = await failed_at_once(manager_for(bot, gateway), gateway)
    assert "the bot file bot.py finished without creating a ClusterClient" in status.last_error
    assert FIX in status.last_error


async def test_a_crash_in_setup_hook_shows_in_status_and_the_other_cluster_starts(
    tmp_path: Path, gateway: GatewayServer
) -> None:
    manager = manager_for(write_bot(tmp_path, SETUP_HOOK_CRASH), gateway, clusters=2, max_restarts=2)
    failed: list[tuple[int, str]] = []
    manager.on("cluster_failed", lambda cid, error: failed.append((cid, error.message)))
    try:
        await manager.spawn()
        await wait_until(lambda: manager.clusters[1].ready, SOON, lambda: manager.clusters)
        await wait_until(lambda: manager.clusters[0].state == "failed", 2 * SOON, lambda: manager.clusters)
        await asyncio.sleep(1.5)
        broken, fine = manager.clusters
        assert fine.ready and fine.restarts == 0 and fine.last_error is None
        assert (
            broken.state == "failed" and broken.restarts == 2 and broken.pid is None
        )  # at the cap, no further
        assert broken.last_error is not None
        lines = broken.last_error.splitlines()
        assert (
            lines[0]
            == "cluster 0 needed 2 restarts within 60 s; not restarting it again (restart cap reached); last error:"
        )
        assert lines[-1] == "RuntimeError: could not load the extension cogs.music"
        assert any("in setup_hook" in line for line in lines)
        assert failed == [
            (
                0,
                "cluster 0 needed 2 restarts within 60 s; not restarting it again (restart cap reached); "
                "its last error: RuntimeError: could not load the extension cogs.music",
            )
        ]
    finally:
        await manager.close()


async def test_an_import_error_is_shown_with_its_traceback(tmp_path: Path, gateway: GatewayServer) -> None:
    bot = write_bot(tmp_path, "import os\nimport cogs_that_do_not_exist\n")
    manager = manager_for(bot, gateway, max_restarts=1)
    try:
        await manager.spawn()
        await wait_until(lambda: manager.clusters[0].state == "failed", 2 * SOON, lambda: manager.clusters)
        (status,) = manager.clusters
        assert status.restarts == 1 and status.last_error is not None
        assert "ModuleNotFoundError: No module named 'cogs_that_do_not_exist'" in status.last_error
        assert 'bot.py", line 2, in <module>' in status.last_error
    finally:
        await manager.close()


async def test_a_status_from_an_older_machine_still_reads() -> None:
    old = {
        "id": 3,
        "shards": [6, 7],
        "pid": None,
        "state": "stopped",
        "guilds": None,
        "restarts": 1,
        "started_at": 1.0,
        "uptime": None,
        "last_heartbeat": None,
        "exit_code": 1,
    }
    assert ClusterStatus.from_json(old).last_error is None
    with pytest.raises(ValueError, match="'last_error' is 5"):
        ClusterStatus.from_json({**old, "last_error": 5})


async def test_a_machine_exits_non_zero_when_a_cluster_fails_for_good(
    tmp_path: Path, gateway: GatewayServer
) -> None:
    bridge = Bridge(
        auth_token="porting",
        port=free_port(),
        pub_port=free_port(),
        total_shards=2,
        shards_per_cluster=1,
        identify_window=IDENTIFY_WINDOW,
    )
    await bridge.start()
    env = {
        **os.environ,
        "ZMQCROSS_DISCORD_API": gateway.api_base,
        "ZMQCROSS_AUTH_TOKEN": "porting",
        "ZMQCROSS_BRIDGE_PORT": str(bridge.port),
        "ZMQCROSS_PUB_PORT": str(bridge.pub_port),
        "ZMQCROSS_SPAWN_DELAY": "0",
        "ZMQCROSS_LOG_LEVEL": "WARNING",
    }
    env.pop("ZMQCROSS_KEYS", None)
    bot = write_bot(tmp_path, SETUP_HOOK_CRASH)
    log = tmp_path / "machine.log"
    machine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zmqcross",
            "machine",
            "--machine-id",
            "m1",
            "--bot",
            str(bot),
            "--exit-on-failed-cluster",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # a file, not a pipe nobody reads while it fills
    )
    try:
        # Before the cap: the bridge's status shows the crash's traceback, and cluster 1 runs.
        async def clusters() -> dict[int, ClusterStatus]:
            status = await bridge.status()
            return {c.id: c for m in status.machines for c in m.clusters}

        end = time.monotonic() + 2 * SOON
        while True:
            seen = await clusters()
            if seen.get(1) and seen[1].ready and seen.get(0) and seen[0].last_error:
                break
            assert time.monotonic() < end and machine.poll() is None, seen
            await asyncio.sleep(0.1)
        assert seen[0].last_error.splitlines()[-1] == "RuntimeError: could not load the extension cogs.music"
        assert "in setup_hook" in seen[0].last_error
        code = await asyncio.to_thread(machine.wait, 3 * SOON)
    finally:
        if machine.poll() is None:
            machine.kill()
            machine.wait()
        await bridge.close()
    err = log.read_text()
    assert code == 1, err
    assert (
        "zmqcross machine: cluster 0 needed 5 restarts within 60 s; not restarting it again (restart cap reached)"
        in err
    )
    assert "the machine exits (exit_on_failed_cluster) so that its supervisor restarts it" in err
    assert (
        "RuntimeError: could not load the extension cogs.music" in err
    )  # the traceback, in the machine's log
