"""The long-running commands: ``zmqcross bridge``, ``zmqcross machine`` and ``zmqcross gateway``.

Each runs until SIGTERM or SIGINT and then shuts down the way its class does it cleanly:
the bridge closes its sockets, a machine drains (:meth:`Machine.serve`), the gateway
closes every Discord connection. What they print on stdout is meant for people and
for scripts waiting on a line (``listening on``, ``N/N clusters ready``); logs go to stderr.

:func:`build_bridge`, :func:`serve_cache` and :func:`build_machine` turn merged settings
into the objects; the example scripts in ``bots/`` build theirs with them too, so a
setting means the same thing to a script and to a command.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from .. import AccessPolicy, Bridge, CacheServer, Client, Machine
from ..client import default_machine_id
from ..cluster.manager import ClusterManager
from ..errors import ConfigurationError
from ..registry import ClientInfo
from .options import cache_options, client_curve, server_curve

__all__ = [
    "WAITING_NOTICE",
    "Stopped",
    "build_bridge",
    "build_machine",
    "describe_cache",
    "describe_permissions",
    "run_bridge",
    "run_gateway",
    "run_machine",
    "serve_cache",
    "stdout_gone",
    "unless_stopped",
]

log = logging.getLogger("zmqcross.cli")

Settings = dict[str, Any]
Say = Callable[[str], None]
T = TypeVar("T")


WAITING_NOTICE = 2.0
"""Seconds a machine waits for its bridge before saying that it does (the wait may last the
whole connect timeout, 30 s by default, and a silent terminal looks like a hang)."""


def printer(name: str) -> Say:
    """Print ``name: text`` lines on stdout, flushed at once (the output is often a pipe).

    A reader that went away (``| tee log`` and Ctrl-C: tee dies first) loses the lines
    and nothing else: the drain goes on and the command exits with its own status.
    """

    def say(text: str) -> None:
        try:
            print(f"{name}: {text}", flush=True)
        except BrokenPipeError:
            stdout_gone()

    return say


def stdout_gone() -> None:
    """Send the rest of stdout to /dev/null: its reader is gone.

    What the failed write left in the buffer, and every later line, would otherwise raise
    again, down to the interpreter's last flush at exit ("Exception ignored ... BrokenPipeError").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


class Stopped(Exception):
    """SIGTERM or SIGINT arrived before the work finished; the work was cancelled."""


async def unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T:
    """``work``'s result; if ``stop`` is set first, cancel it and raise :class:`Stopped`."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Stopped
    return task.result()


# --------------------------------------------------------------------------- bridge


def build_bridge(settings: Settings) -> Bridge:
    """The bridge of ``bridge`` settings, not started yet.

    With CURVE and a policy under which no key may ``host``, a warning says that every
    machine will be refused its clusters.
    """
    policy = settings["permissions"] or AccessPolicy()
    if (
        settings["keys"]
        and "host" not in policy.default
        and not any("host" in a for a in policy.keys.values())
    ):
        log.warning(
            "no CURVE key may host clusters: machines will be refused their shards; name their keys "
            "in the permissions, e.g. --permissions 'machine-*=host,eval,request,cache'"
        )
    return Bridge(
        auth_token=settings["auth_token"],
        host=settings["listen_host"],
        port=settings["bridge_port"],
        pub_port=settings["pub_port"],
        total_shards=settings["total_shards"],
        shards_per_cluster=settings["shards_per_cluster"],
        total_machines=settings["total_machines"],
        token=settings["discord_token"],
        api_base=settings["discord_api"],
        curve=server_curve(settings["keys"]),
        permissions=settings["permissions"],
        heartbeat_interval=settings["heartbeat_interval"],
        heartbeat_timeout=settings["heartbeat_timeout"],
        metrics_port=settings["metrics_port"],
        metrics_host=settings["metrics_host"],
        max_concurrency=settings["max_concurrency"],
        identify_window=settings["identify_window"],
        session_budget=settings["session_budget"],
        session_reserve=settings["session_reserve"],
        **({"lease": settings["lease"]} if settings["lease"] is not None else {}),
        **({"claim_timeout": settings["claim_timeout"]} if settings["claim_timeout"] is not None else {}),
    )


def serve_cache(bridge: Bridge, settings: Settings) -> CacheServer | None:
    """The shared cache the ``cache_*`` settings ask for, served by ``bridge``; None without ``cache_paths``.

    A persisted cache is restored here, before the bridge starts; closing the bridge
    closes the cache and saves it one last time.
    """
    options = cache_options(settings)
    return None if options is None else CacheServer(bridge, **options)


def describe_cache(settings: Settings) -> str | None:
    """One line saying what cache the settings serve, or None for no cache."""
    options = cache_options(settings)
    if options is None:
        return None

    def path(p: Any) -> str:
        size = "unbounded" if p.max_size is None else f"max_size {p.max_size}"
        return f"{p.name} ({size}{'' if p.ttl is None else f', ttl {p.ttl:g} s'})"

    persist = options["persist_path"]
    kept = "not persisted" if persist is None else f"saved to {persist} every {options['save_interval']:g} s"
    return f"cache: paths {', '.join(path(p) for p in options['paths'])}; {kept}"


def _rights(actions: Any) -> str:
    return "all" if frozenset(actions) == AccessPolicy().token else ",".join(sorted(actions)) or "none"


def describe_permissions(settings: Settings) -> str:
    """One line saying what the bridge's peers may do under these settings."""
    policy = settings["permissions"] or AccessPolicy()
    narrowed = "".join(f"; agent {a}: at most {_rights(r)}" for a, r in policy.agents.items())
    if not settings["keys"]:
        return f"permissions: no CURVE, every token holder: {_rights(policy.token)}{narrowed}"
    named = "".join(f"{k}: {_rights(r)}; " for k, r in policy.keys.items())
    return f"permissions by CURVE key: {named}any other key: {_rights(policy.default)}{narrowed}"


async def run_bridge(settings: Settings, stop: asyncio.Event) -> int:
    """``zmqcross bridge``: plan the shards, let machines in, until stopped."""
    say = printer("bridge")
    bridge = build_bridge(settings)
    serve_cache(bridge, settings)  # closed and saved by the bridge's close

    def connected(client: ClientInfo, initial_data: Any) -> None:
        say(f"{client.agent} {client.id!r} connected from {client.address or 'an unknown address'}")

    def disconnected(client: ClientInfo, reason: str) -> None:
        say(f"{client.agent} {client.id!r} disconnected ({reason})")

    bridge.on("connect", connected)
    bridge.on("disconnect", disconnected)

    async with bridge:
        plan = bridge.plan
        say(
            f"listening on {bridge.endpoint} (beacons on {bridge.pub_endpoint}), "
            f"CURVE {'on' if settings['keys'] else 'off'}"
        )
        say(
            f"plan {plan.version}: {plan.total_shards} shards in {plan.total_clusters} clusters "
            f"for {len(plan.chunks)} machines"
        )
        say(describe_permissions(settings))
        if bridge.metrics is not None:
            say(f"metrics on {bridge.metrics.url}")
        cache = describe_cache(settings)
        if cache is not None:
            say(cache)
        try:
            await unless_stopped(stop, bridge.wait_closed())
        except Stopped:
            pass
    say("closed")
    return 0


# --------------------------------------------------------------------------- machine


class Progress:
    """Prints ``k/n clusters ready`` each time the count changes, for whichever manager runs.

    A machine creates its manager inside :meth:`Machine.start` (or later, as a standby
    taking over), so the manager is looked for until it appears; its events then drive
    the lines, and the state at that moment is printed so nothing is missed.
    """

    def __init__(self, machine: Machine, say: Say) -> None:
        self._machine = machine
        self._say = say
        self._manager: ClusterManager | None = None
        self._last: tuple[int, int] | None = None

    async def follow(self, interval: float = 0.05) -> None:
        """Watch for the machine's manager changing; runs until cancelled."""
        while True:
            manager = self._machine.manager
            if manager is not None and manager is not self._manager:
                self._manager = manager
                for event in ("cluster_create", "cluster_ready", "cluster_exit"):
                    manager.on(event, lambda *_, m=manager: self.report(m))
                self.report(manager)
            await asyncio.sleep(interval)

    def report(self, manager: ClusterManager) -> None:
        """Print the ready count of ``manager`` if it changed."""
        if manager is not self._manager:
            return
        clusters = manager.clusters
        now = (sum(c.ready for c in clusters), len(clusters))
        if now != self._last:
            self._last = now
            self._say(f"{now[0]}/{now[1]} clusters ready")


def build_machine(settings: Settings) -> Machine:
    """The machine of ``machine`` settings (its client not connected yet); its id is ``machine.client.id``."""
    bot_file = Path(settings["bot_file"])
    if not bot_file.is_file():
        raise ConfigurationError(f"bot file {str(bot_file)!r} does not exist")
    machine_id = settings["machine_id"] or default_machine_id("bot")
    client = Client(
        agent="bot",
        host=settings["bridge_host"],
        port=settings["bridge_port"],
        pub_port=settings["pub_port"],
        auth_token=settings["auth_token"],
        machine_id=machine_id,
        rolling_restarts=settings["rolling_restarts"],
        curve=client_curve(settings["keys"], settings["key_name"] or machine_id),
        connect_timeout=settings["connect_timeout"],
    )
    cluster_env = {"ZMQCROSS_DISCORD_API": settings["discord_api"]} if settings["discord_api"] else {}
    machine = Machine(
        bot_file,
        client,
        manager_options={
            "spawn_delay": settings["spawn_delay"],
            "heartbeat_timeout": settings["cluster_heartbeat_timeout"],
            "shard_down_timeout": settings["shard_down_timeout"],
            "env": cluster_env,
            "token": settings["discord_token"],
        },
        drain_timeout=settings["drain_timeout"],
        exit_on_failed_cluster=settings["exit_on_failed_cluster"],
    )
    return machine


async def run_machine(settings: Settings, stop: asyncio.Event) -> int:
    """``zmqcross machine``: the whole machine, as bots/cluster.py runs it, until stopped."""
    machine = build_machine(settings)
    client = machine.client
    say = printer(client.id)
    where = f"{settings['bridge_host']}:{settings['bridge_port']}"
    client.on("ready", lambda: say(f"registered with the bridge at {where}"))
    client.on("disconnect", lambda reason: say(f"lost the bridge: {reason}; reconnecting"))
    client.on(
        "assignment", lambda share, reason: say(f"assigned clusters {list(share.cluster_list)}: {reason}")
    )
    progress = asyncio.ensure_future(Progress(machine, say).follow())
    waiting = asyncio.ensure_future(
        _say_while_waiting(
            client,
            say,
            f"waiting for the bridge at {where} (giving up after {settings['connect_timeout']:g} s)",
        )
    )
    try:
        try:
            share = await unless_stopped(stop, machine.start())
        except Stopped:
            say("stopped while starting; stopping the clusters started so far")
            await machine.drain("stopped while starting")
            return 0
        except BaseException:
            if machine.manager is not None:
                await machine.drain("failed to start")
            else:
                await client.close("failed to start")
            raise
        if share.standby:
            say("standby: every chunk of the plan is held; waiting for one to free up")
        else:
            say(f"runs clusters {list(share.cluster_list)}, shards {[list(s) for s in share.shard_list]}")
        if stop.is_set():
            await machine.drain("the machine is shutting down")
        else:
            # serve() puts its own SIGTERM/SIGINT handlers in place of ours, then drains.
            await machine.serve()
    finally:
        progress.cancel()
        waiting.cancel()
    say("drained and stopped")
    return 0


async def _say_while_waiting(client: Client, say: Say, text: str) -> None:
    await asyncio.sleep(WAITING_NOTICE)
    if not client.connected:
        say(text)


# --------------------------------------------------------------------------- gateway


def run_gateway(settings: Settings) -> int:
    """``zmqcross gateway``: zmqcross.gateway's own main, with the merged settings as its flags."""
    from ..gateway.__main__ import main as gateway_main  # only this command needs the web server

    argv = [
        "--host",
        settings["gateway_host"],
        "--port",
        str(settings["gateway_port"]),
        "--guilds",
        str(settings["gateway_guilds"]),
    ]
    if settings["gateway_shards_hint"] is not None:
        argv += ["--shards-hint", str(settings["gateway_shards_hint"])]
    argv += ["--identify-window", str(settings["gateway_identify_window"])]
    if settings["gateway_max_concurrency"] is not None:
        argv += ["--max-concurrency", str(settings["gateway_max_concurrency"])]
    if settings["gateway_session_budget"] is not None:
        argv += ["--session-budget", str(settings["gateway_session_budget"])]
    if settings["gateway_token"] is not None:
        argv += ["--token", settings["gateway_token"]]
    return gateway_main(argv)
