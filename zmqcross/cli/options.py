"""The settings each ``zmqcross`` command reads, and the CURVE settings built from a keys folder.

A setting's TOML key is its environment variable without ``ZMQCROSS_``, in lower case
(``ZMQCROSS_BRIDGE_PORT`` is ``bridge_port``). The example scripts in ``bots/`` read these
same settings (:func:`zmqcross.cli.settings_for`). The flags follow the class each command drives: ``zmqcross bridge
--host/--port`` are :class:`~zmqcross.Bridge`'s ``host``/``port``, while a machine's
``--bridge-host/--bridge-port`` say where that bridge is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..cache import DEFAULT_SAVE_INTERVAL
from ..config import (
    CONFIG_ENV,
    Setting,
    boolean,
    cache_paths,
    cache_paths_data,
    host_names,
    host_names_data,
    log_level,
    non_negative_int,
    non_negative_number,
    permissions,
    permissions_data,
    port,
    positive_int,
    positive_number,
    shard_count,
    text,
)
from ..errors import ConfigurationError
from ..eventloop import LOOP_ENV
from ..security import CurveClient, CurveServer

__all__ = [
    "BRIDGE",
    "COMMANDS",
    "DASHBOARD",
    "GATEWAY",
    "KNOWN_VARIABLES",
    "MACHINE",
    "RESHARD",
    "STATUS",
    "cache_options",
    "client_curve",
    "server_curve",
]

AUTH_TOKEN = Setting(
    "auth_token",
    "ZMQCROSS_AUTH_TOKEN",
    text,
    "the fleet's shared secret, checked at every registration (a flag shows in `ps`: prefer the "
    "environment or the config file)",
    metavar="TOKEN",
    required=True,
)
KEYS = Setting(
    "keys",
    "ZMQCROSS_KEYS",
    text,
    "CURVE keys folder as `zmqcross keygen --fleet` lays it out: bridge.key, bridge.key_secret and "
    "allowed/NAME.key*; unset: no CURVE (plain TCP)",
    metavar="DIR",
)
LOG_LEVEL = Setting(
    "log_level", "ZMQCROSS_LOG_LEVEL", log_level, "log level of messages on stderr", default="INFO"
)
DISCORD_TOKEN = Setting("discord_token", "DISCORD_TOKEN", text, "the bot's Discord token", metavar="TOKEN")
DISCORD_API = Setting(
    "discord_api",
    "ZMQCROSS_DISCORD_API",
    text,
    "Discord's API base, to use an offline gateway (http://HOST:PORT/api/v10); unset: real Discord",
    metavar="URL",
)
BRIDGE_HOST = Setting(
    "bridge_host", "ZMQCROSS_BRIDGE_HOST", text, "the bridge's address", default="127.0.0.1"
)
BRIDGE_PORT = Setting(
    "bridge_port", "ZMQCROSS_BRIDGE_PORT", port, "the bridge's request (ROUTER) port", default=4444
)
PUB_PORT = Setting(
    "pub_port",
    "ZMQCROSS_PUB_PORT",
    port,
    "the bridge's beacon (PUB) port [default: the bridge port + 1]",
    metavar="PORT",
)
CONNECT_TIMEOUT = Setting(
    "connect_timeout",
    "ZMQCROSS_CONNECT_TIMEOUT",
    positive_number,
    "seconds to wait for the bridge to accept this client before giving up",
    default=30.0,
    metavar="SECONDS",
)

CACHE_PATHS = Setting(
    "cache_paths",
    "ZMQCROSS_CACHE_PATHS",
    cache_paths,
    "serve the shared cache (zmqcross.CacheServer) with these paths, space-separated, each "
    "NAME[,max_size=N|none][,ttl=SECONDS|none] (max_size default 10000, ttl default none: "
    'forever); in TOML also [{ path = "NAME", max_size = N, ttl = SECONDS }, ...]; '
    "unset: no cache",
    metavar="PATHS",
    parse_data=cache_paths_data,
)

BRIDGE = (
    dataclasses.replace(
        Setting("listen_host", "ZMQCROSS_LISTEN_HOST", text, "", default="127.0.0.1"),
        flag="--host",
        help="address to bind (0.0.0.0 for every interface; without --keys that logs a warning)",
    ),
    dataclasses.replace(BRIDGE_PORT, flag="--port", help="request (ROUTER) port to bind"),
    dataclasses.replace(PUB_PORT, help="beacon (PUB) port to bind [default: --port + 1]"),
    AUTH_TOKEN,
    Setting(
        "total_shards",
        "ZMQCROSS_TOTAL_SHARDS",
        shard_count,
        'shards of the whole bot, or "auto" to ask Discord (needs the Discord token)',
        default=1,
        metavar="N|auto",
    ),
    Setting(
        "shards_per_cluster",
        "ZMQCROSS_SHARDS_PER_CLUSTER",
        positive_int,
        "shards each cluster process runs",
        default=1,
        metavar="K",
    ),
    Setting(
        "total_machines",
        "ZMQCROSS_TOTAL_MACHINES",
        positive_int,
        "machines the clusters are spread over; more machines than this wait as standbys",
        default=1,
        metavar="M",
    ),
    KEYS,
    Setting(
        "permissions",
        "ZMQCROSS_PERMISSIONS",
        permissions,
        "what each peer may do (zmqcross.AccessPolicy), as WHO=ACTIONS rules separated by ';': WHO is "
        "a CURVE key name or pattern (machine-*), default (a key no rule names), token (every peer "
        "without CURVE) or agent:NAME (narrows that agent); ACTIONS are host, eval, request, cache, "
        "admin, comma-separated, or all or none; e.g. 'machine-*=host,eval,request,cache;ops=all'; in "
        "TOML also a [bridge.permissions] table [default: unnamed keys request,cache; token all]",
        metavar="RULES",
        parse_data=permissions_data,
    ),
    dataclasses.replace(
        DISCORD_TOKEN,
        help="the bot's Discord token: the bridge asks Discord for its IDENTIFY limits (and the shard "
        'count, with --total-shards "auto")',
    ),
    dataclasses.replace(DISCORD_API, help="Discord's API base for /gateway/bot (an offline gateway's URL)"),
    Setting(
        "max_concurrency",
        "ZMQCROSS_MAX_CONCURRENCY",
        positive_int,
        "IDENTIFY rate-limit buckets (Discord's max_concurrency), for a bridge without the Discord "
        "token; with it Discord's value is used [default: 1]",
        metavar="N",
    ),
    Setting(
        "identify_window",
        "ZMQCROSS_IDENTIFY_WINDOW",
        positive_number,
        "seconds between two IDENTIFYs of one bucket, before the bridge's margin (Discord: 5; less "
        "only for an offline gateway run with a shorter --identify-window)",
        default=5.0,
        metavar="SECONDS",
    ),
    Setting(
        "session_budget",
        "ZMQCROSS_SESSION_BUDGET",
        non_negative_int,
        "session starts left today, for a bridge without the Discord token (with it, Discord's "
        "session_start_limit is used) [default: not counted]",
        metavar="N",
    ),
    Setting(
        "session_reserve",
        "ZMQCROSS_SESSION_RESERVE",
        non_negative_int,
        "session starts the bridge never grants: it stops granting IDENTIFYs when the day's budget "
        "would fall below this [default: 2%% of the day's total]",
        metavar="N",
    ),
    Setting(
        "heartbeat_interval",
        "ZMQCROSS_HEARTBEAT_INTERVAL",
        positive_number,
        "seconds between heartbeats to every client",
        default=1.0,
        metavar="SECONDS",
    ),
    Setting(
        "heartbeat_timeout",
        "ZMQCROSS_HEARTBEAT_TIMEOUT",
        positive_number,
        "a client silent this long is dropped and its clusters go to a standby",
        default=4.0,
        metavar="SECONDS",
    ),
    Setting(
        "lease",
        "ZMQCROSS_LEASE",
        positive_number,
        "seconds a machine runs its clusters after it last heard the bridge; a lost machine's shards "
        "move to a standby only after it (longer: survives longer bridge outages; shorter: fails "
        "over sooner) [default: 10]",
        metavar="SECONDS",
    ),
    Setting(
        "claim_timeout",
        "ZMQCROSS_CLAIM_TIMEOUT",
        positive_number,
        "seconds a standby handed a chunk has to start it (claim it) before it goes to the next "
        "standby [default: 30]",
        metavar="SECONDS",
    ),
    Setting(
        "metrics_port",
        "ZMQCROSS_METRICS_PORT",
        port,
        "serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port); unset: no metrics",
        metavar="PORT",
    ),
    Setting(
        "metrics_host",
        "ZMQCROSS_METRICS_HOST",
        text,
        "address the metrics endpoint binds",
        default="127.0.0.1",
        metavar="HOST",
    ),
    CACHE_PATHS,
    Setting(
        "cache_persist_path",
        "ZMQCROSS_CACHE_PERSIST_PATH",
        text,
        "file the cache is restored from at start and saved to (atomically) every "
        "--cache-save-interval seconds and on a clean stop; its folder must exist; unset: not persisted",
        metavar="FILE",
    ),
    Setting(
        "cache_save_interval",
        "ZMQCROSS_CACHE_SAVE_INTERVAL",
        positive_number,
        "seconds between saves of a persisted cache (only when it changed): a crash loses at most "
        f"this many seconds of writes [default: {DEFAULT_SAVE_INTERVAL:g}]",
        metavar="SECONDS",
    ),
    LOG_LEVEL,
)

MACHINE_ID = Setting(
    "machine_id",
    "ZMQCROSS_MACHINE_ID",
    text,
    "this machine's id: unique and stable, so a machine that comes back gets its clusters back "
    "[default: HOSTNAME:bot]",
    metavar="ID",
)

MACHINE = (
    BRIDGE_HOST,
    BRIDGE_PORT,
    PUB_PORT,
    AUTH_TOKEN,
    MACHINE_ID,
    KEYS,
    Setting(
        "key_name",
        "ZMQCROSS_KEY_NAME",
        text,
        "this machine's key in the keys folder: allowed/NAME.key_secret [default: the machine id]",
        metavar="NAME",
    ),
    Setting(
        "bot_file", "ZMQCROSS_BOT_FILE", text, "the bot file each cluster runs", flag="--bot", required=True
    ),
    Setting(
        "spawn_delay",
        "ZMQCROSS_SPAWN_DELAY",
        non_negative_number,
        "seconds between two cluster starts (0: all at once; their IDENTIFYs wait for turns in "
        "the bridge's queue either way)",
        default=0.0,
        metavar="SECONDS",
    ),
    Setting(
        "rolling_restarts",
        "ZMQCROSS_ROLLING_RESTARTS",
        boolean,
        "follow plan changes by replacing clusters one at a time (off: keep running the old plan)",
        default=True,
    ),
    Setting(
        "cluster_heartbeat_timeout",
        "ZMQCROSS_CLUSTER_HEARTBEAT_TIMEOUT",
        positive_number,
        "a cluster silent this long (its event loop is stuck) is killed and restarted",
        default=15.0,
        metavar="SECONDS",
    ),
    Setting(
        "shard_down_timeout",
        "ZMQCROSS_SHARD_DOWN_TIMEOUT",
        positive_number,
        "a shard of a ready cluster down this long (disconnected, not coming back) gets its cluster "
        "restarted, the other shards serving meanwhile",
        default=60.0,
        metavar="SECONDS",
    ),
    Setting(
        "exit_on_failed_cluster",
        "ZMQCROSS_EXIT_ON_FAILED_CLUSTER",
        boolean,
        "when a cluster fails for good (a mistake in the bot file, or its restart cap reached), "
        "drain and exit with status 1 so a supervisor (systemd Restart=on-failure) restarts the "
        "machine (off: keep serving the other clusters; status shows the failed one)",
        default=False,
    ),
    CONNECT_TIMEOUT,
    Setting(
        "drain_timeout",
        "ZMQCROSS_DRAIN_TIMEOUT",
        non_negative_number,
        "on SIGTERM/SIGINT, seconds to let requests in flight finish before stopping the clusters",
        default=10.0,
        metavar="SECONDS",
    ),
    dataclasses.replace(DISCORD_TOKEN, help="the bot's Discord token, given to every cluster"),
    dataclasses.replace(DISCORD_API, help=DISCORD_API.help + "; given to every cluster"),
    LOG_LEVEL,
)

# A status query or a reshard is not the machine it may run on: its id and key have their own
# settings, or ZMQCROSS_MACHINE_ID from a machine's environment would make it pose as that
# machine (the bridge would hand it the machine's routing id).
ADMIN = (
    BRIDGE_HOST,
    BRIDGE_PORT,
    PUB_PORT,
    AUTH_TOKEN,
    KEYS,
    Setting(
        "dashboard_id",
        "ZMQCROSS_DASHBOARD_ID",
        text,
        "client id to connect with (agent dashboard) [default: HOSTNAME:status]",
        flag="--client-id",
        metavar="ID",
    ),
    Setting(
        "dashboard_key",
        "ZMQCROSS_DASHBOARD_KEY",
        text,
        "key in the keys folder to connect with: allowed/NAME.key_secret",
        flag="--key-name",
        default="dashboard",
        metavar="NAME",
    ),
    dataclasses.replace(CONNECT_TIMEOUT, default=10.0),
    dataclasses.replace(LOG_LEVEL, default="WARNING"),
)
STATUS = ADMIN
RESHARD = ADMIN
RESTART = ADMIN

# The web dashboard is a dashboard client too, with the address its page is served on.
DASHBOARD = (
    *(
        dataclasses.replace(
            s, help="client id to connect with (agent dashboard) [default: HOSTNAME:dashboard]"
        )
        if s.name == "dashboard_id"
        else s
        for s in ADMIN
    ),
    Setting(
        "dashboard_host",
        "ZMQCROSS_DASHBOARD_HOST",
        text,
        "address the web page binds (it can run evals' timing and guild lookups: keep it private)",
        default="127.0.0.1",
        flag="--host",
    ),
    Setting(
        "dashboard_port",
        "ZMQCROSS_DASHBOARD_PORT",
        port,
        "the web page's TCP port (0: any free port)",
        default=8080,
        flag="--port",
    ),
    Setting(
        "dashboard_allowed_hosts",
        "ZMQCROSS_DASHBOARD_ALLOWED_HOSTS",
        host_names,
        "more names the page is reached by (a proxy's, the machine's DNS name), comma-separated; a "
        "request naming another Host is refused (DNS rebinding), as is one from another Origin; "
        "localhost and IP addresses are always answered; * answers any Host; in TOML also a list",
        flag="--allowed-hosts",
        metavar="NAMES",
        parse_data=host_names_data,
    ),
)

GATEWAY = (
    Setting(
        "gateway_host", "ZMQCROSS_GATEWAY_HOST", text, "address to bind", default="127.0.0.1", flag="--host"
    ),
    Setting(
        "gateway_port", "ZMQCROSS_GATEWAY_PORT", port, "TCP port (0: any free port)", default=0, flag="--port"
    ),
    Setting(
        "gateway_guilds",
        "ZMQCROSS_GATEWAY_GUILDS",
        positive_int,
        "number of synthetic guilds",
        default=100,
        flag="--guilds",
        metavar="N",
    ),
    Setting(
        "gateway_shards_hint",
        "ZMQCROSS_GATEWAY_SHARDS_HINT",
        positive_int,
        "shards recommended by /gateway/bot [default: one per 1,000 guilds]",
        flag="--shards-hint",
        metavar="K",
    ),
    Setting(
        "gateway_max_concurrency",
        "ZMQCROSS_GATEWAY_MAX_CONCURRENCY",
        non_negative_int,
        "Discord's identify rate limit: N buckets (shard_id %% N), one IDENTIFY per bucket per "
        "--identify-window, refused with op 9 as Discord does (0: no limit)",
        default=1,
        flag="--max-concurrency",
        metavar="N",
    ),
    Setting(
        "gateway_identify_window",
        "ZMQCROSS_GATEWAY_IDENTIFY_WINDOW",
        positive_number,
        "seconds a bucket stays taken after an accepted IDENTIFY (Discord: 5)",
        default=5.0,
        flag="--identify-window",
        metavar="SECONDS",
    ),
    Setting(
        "gateway_session_budget",
        "ZMQCROSS_GATEWAY_SESSION_BUDGET",
        positive_int,
        "enforce a session-start budget: after N IDENTIFYs a day the next closes with 4004 and "
        "ends every session, as Discord does [default: no limit]",
        flag="--session-budget",
        metavar="N",
    ),
    Setting(
        "gateway_token",
        "ZMQCROSS_GATEWAY_TOKEN",
        text,
        "accept only this bot token [default: any]",
        flag="--token",
        metavar="TOKEN",
    ),
)

COMMANDS: dict[str, tuple[Setting, ...]] = {
    "bridge": BRIDGE,
    "machine": MACHINE,
    "gateway": GATEWAY,
    "status": STATUS,
    "reshard": RESHARD,
    "restart": RESTART,
    "dashboard": DASHBOARD,
}
"""The commands that read settings, and what each reads (also the tables a config file may have)."""

KNOWN_VARIABLES = frozenset(
    {s.env for settings in COMMANDS.values() for s in settings if s.env}
    | {CONFIG_ENV, LOOP_ENV}
    # read by cluster processes only
    | {
        "ZMQCROSS_DISCORD_GATEWAY",
        "ZMQCROSS_DISCORD_REST",
        "ZMQCROSS_IDENTIFY_QUEUE",
        "ZMQCROSS_CLUSTER_PROCESS",
    }
)
"""Every ``ZMQCROSS_*`` variable zmqcross reads. Known to any command, a name is not warned about
by the others: one environment (a compose file, an env file) often serves every command."""


def cache_options(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """:class:`~zmqcross.CacheServer`'s options from ``bridge`` settings; None when no cache is asked for.

    A persist file or save interval given without any cache path is refused rather than
    ignored: it says a cache was meant.
    """
    paths = settings["cache_paths"]
    if paths is None:
        for name in ("cache_persist_path", "cache_save_interval"):
            if settings[name] is not None:
                raise ConfigurationError(f"{name} is set but no cache path is: set {CACHE_PATHS.sources()}")
        return None
    interval = settings["cache_save_interval"]
    return {
        "paths": paths,
        "persist_path": settings["cache_persist_path"],
        "save_interval": DEFAULT_SAVE_INTERVAL if interval is None else interval,
    }


def server_curve(keys: str | None) -> CurveServer | None:
    """The bridge's CURVE settings from a keys folder: bridge.key_secret and the allowed/ folder."""
    if keys is None:
        return None
    return CurveServer.from_files(Path(keys) / "bridge.key_secret", allow=Path(keys) / "allowed")


def client_curve(keys: str | None, name: str) -> CurveClient | None:
    """A client's CURVE settings from a keys folder: allowed/NAME.key_secret and bridge.key."""
    if keys is None:
        return None
    return CurveClient.from_files(
        Path(keys) / "allowed" / f"{name}.key_secret", server_key=Path(keys) / "bridge.key"
    )
