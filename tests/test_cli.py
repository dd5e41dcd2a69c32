"""The zmqcross command: help, settings from file/environment/flags, exit codes, and a real fleet."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import zmq.auth
from conftest import free_port
from netkit import ROOT, Service, clean_env

from zmqcross import AccessPolicy, CacheClient, Client, ConfigurationError, FleetStatus, generate_keypair
from zmqcross._cachestore import DEFAULT_MAX_SIZE, CachePath, decode_snapshot
from zmqcross.cli import configure
from zmqcross.cli.options import COMMANDS, KNOWN_VARIABLES, cache_options
from zmqcross.cli.table import render_shards, render_status, shard_ranges
from zmqcross.config import unknown_variables
from zmqcross.security import ACTIONS
from zmqcross.status import ClusterStatus, MachineStatus, ShardStatus

BOTS = ROOT / "bots"
COMMAND_NAMES = ["bridge", "machine", "gateway", "status", "reshard", "restart", "keygen", "demo", "dashboard"]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqcross", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=50,
        env=env if env is not None else clean_env(),
        cwd=cwd,
    )


# --------------------------------------------------------------------------- help


def test_help_lists_every_command_and_the_precedence() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for name in COMMAND_NAMES:
        assert re.search(rf"^\s+{name}\s+\S", result.stdout, re.MULTILINE), name
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "flags override the environment, which overrides the file" in text
    assert "2 for bad configuration or usage" in text


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("zmqcross")
    result = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "reshard" in result.stdout


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_each_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: zmqcross {command}")
    for setting in COMMANDS.get(command, ()):
        assert setting.option in result.stdout
        if setting.env:
            assert f"${setting.env}" in result.stdout, setting.env
    if command in COMMANDS:
        text = " ".join(result.stdout.split())
        assert "lowest to highest precedence" in text and "--config FILE" in text


def test_keygen_help_mentions_the_mode() -> None:
    assert "0600" in run("keygen", "--help").stdout


def test_unknown_command_fails_with_usage() -> None:
    result = run("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


# --------------------------------------------------------------------------- settings


def test_settings_names_follow_one_rule_and_no_script_reads_its_own() -> None:
    read = {s.env for settings in COMMANDS.values() for s in settings} | {"ZMQCROSS_CONFIG"}
    for settings in COMMANDS.values():
        for s in settings:
            assert s.env is not None
            # the TOML key is the variable's name without ZMQCROSS_, in lower case
            assert s.name == s.env.removeprefix("ZMQCROSS_").lower()
    # bots/ and the compose file name no variable the commands do not read: no second path
    for path in [*BOTS.glob("*.py"), BOTS / "docker-compose.yml"]:
        names = set(re.findall(r"ZMQCROSS_[A-Z_]*[A-Z]", path.read_text()))
        assert names <= read, (path.name, names - read)


def test_no_auth_token_is_built_in_anywhere() -> None:
    shipped = [*BOTS.iterdir(), *(ROOT / "zmqcross").rglob("*.py")]
    for path in shipped:
        if path.is_file():
            assert "change-me" not in path.read_text(), path


def test_flags_override_environment_override_file_override_defaults(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(
        'auth_token = "from-file"\nbridge_host = "top.example"\nspawn_delay = 2\n'
        '[machine]\nbridge_host = "table.example"\nbot_file = "bot.py"\nrolling_restarts = false\n'
    )
    argv = ["machine", "--config", str(config)]
    values = configure(argv, {}).settings
    assert values["auth_token"] == "from-file"  # top level
    assert values["bridge_host"] == "table.example"  # [machine] beats the top level
    assert values["spawn_delay"] == 2.0 and values["rolling_restarts"] is False
    assert values["bridge_port"] == 4444 and values["cluster_heartbeat_timeout"] == 15.0  # defaults

    env = {
        "ZMQCROSS_BRIDGE_HOST": "env.example",
        "ZMQCROSS_ROLLING_RESTARTS": "yes",
        "ZMQCROSS_BRIDGE_PORT": "",
    }
    values = configure(argv, env).settings
    assert values["bridge_host"] == "env.example" and values["rolling_restarts"] is True
    assert values["bridge_port"] == 4444  # an empty variable counts as unset

    values = configure([*argv, "--bridge-host", "flag.example", "--no-rolling-restarts"], env).settings
    assert values["bridge_host"] == "flag.example" and values["rolling_restarts"] is False

    # $ZMQCROSS_CONFIG names the file when --config does not
    assert configure(["machine"], {"ZMQCROSS_CONFIG": str(config)}).settings["auth_token"] == "from-file"


def test_bridge_reads_auto_and_its_own_flags() -> None:
    env = {"ZMQCROSS_AUTH_TOKEN": "t", "ZMQCROSS_TOTAL_SHARDS": "auto", "DISCORD_TOKEN": "bot-token"}
    values = configure(["bridge", "--host", "0.0.0.0", "--port", "5000"], env).settings
    assert values["total_shards"] == "auto" and values["discord_token"] == "bot-token"
    assert (values["listen_host"], values["bridge_port"], values["pub_port"]) == ("0.0.0.0", 5000, None)


def test_status_ignores_the_machine_id_of_its_host() -> None:
    # On a machine's host, ZMQCROSS_MACHINE_ID names that machine; a status query must not pose as it.
    env = {"ZMQCROSS_AUTH_TOKEN": "t", "ZMQCROSS_MACHINE_ID": "machine-1", "ZMQCROSS_KEY_NAME": "machine-1"}
    values = configure(["status"], env).settings
    assert values["dashboard_id"] is None and values["dashboard_key"] == "dashboard"


@pytest.mark.parametrize(
    ("file", "env", "message"),
    [
        ("", {"ZMQCROSS_BRIDGE_PORT": "abc"}, "$ZMQCROSS_BRIDGE_PORT: 'abc' is not an integer"),
        ("", {"ZMQCROSS_BRIDGE_PORT": "70000"}, "70000 is not a TCP port"),
        ('bridge_port = "x"\n', {}, "fleet.toml bridge_port: 'x' is not an integer"),
        ("[machine]\nspawn_delay = -1\n", {}, "fleet.toml [machine] spawn_delay: '-1' is negative"),
        ("brige_port = 1\n", {}, "unknown key 'brige_port'"),
        ("[machine]\ntotal_shards = 4\n", {}, "[machine] has unknown key 'total_shards'"),
        ("[machines]\n", {}, "unknown table [machines]"),
        ("auth_token = [1]\n", {}, "expected a single value, not list"),
        ("not toml = =\n", {}, "is not valid TOML"),
    ],
)
def test_bad_settings_say_where_they_come_from(
    tmp_path: Path, file: str, env: dict[str, str], message: str
) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(file)
    with pytest.raises(ConfigurationError) as caught:
        configure(["machine", "--config", str(config), "--bot", "b.py"], env)
    assert message in str(caught.value)


def test_a_missing_token_says_how_to_give_it() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"no auth token given: set --auth-token, \$ZMQCROSS_AUTH_TOKEN or auth_token in the config file",
    ):
        configure(["status"], {})


def test_bad_flag_is_a_usage_error() -> None:
    result = run("bridge", "--total-shards", "many", env=clean_env(ZMQCROSS_AUTH_TOKEN="t"))
    assert result.returncode == 2
    assert "argument --total-shards: 'many' is neither a positive integer nor \"auto\"" in result.stderr


def test_dashboard_allowed_hosts_from_file_environment_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(
        'auth_token = "t"\n[dashboard]\ndashboard_allowed_hosts = ["Dash.Example.com", "10.0.0.5"]\n'
    )
    argv = ["dashboard", "--config", str(config)]
    assert configure(argv, {}).settings["dashboard_allowed_hosts"] == ("dash.example.com", "10.0.0.5")
    env = {"ZMQCROSS_DASHBOARD_ALLOWED_HOSTS": "ops.lan, proxy.lan"}
    assert configure(argv, env).settings["dashboard_allowed_hosts"] == ("ops.lan", "proxy.lan")
    assert configure([*argv, "--allowed-hosts", "*"], env).settings["dashboard_allowed_hosts"] == ("*",)
    assert configure(["dashboard"], {"ZMQCROSS_AUTH_TOKEN": "t"}).settings["dashboard_allowed_hosts"] is None
    with pytest.raises(
        ConfigurationError,
        match="'dash.lan:8080' is not a host name .give the name only: no scheme, path or port",
    ):
        configure(
            ["dashboard"], {"ZMQCROSS_AUTH_TOKEN": "t", "ZMQCROSS_DASHBOARD_ALLOWED_HOSTS": "dash.lan:8080"}
        )


def test_an_unknown_variable_is_warned_about_with_the_nearest_name() -> None:
    env = {"ZMQCROSS_TOTAL_SHARD": "8", "ZMQCROSS_TOTAL_MACHINES": "2", "ZMQCROSS_WHATEVER": "1", "HOME": "/"}
    assert unknown_variables(env, KNOWN_VARIABLES) == [
        "unknown setting ZMQCROSS_TOTAL_SHARD (did you mean ZMQCROSS_TOTAL_SHARDS?); it is ignored "
        "(`zmqcross COMMAND --help` lists each variable)",
        "unknown setting ZMQCROSS_WHATEVER; it is ignored (`zmqcross COMMAND --help` lists each variable)",
    ]
    # a variable of another command is no typo: one environment often serves them all
    assert unknown_variables({"ZMQCROSS_BOT_FILE": "b.py", "ZMQCROSS_LOOP": "asyncio"}, KNOWN_VARIABLES) == []


def test_every_variable_the_docs_name_is_known() -> None:
    for path in [ROOT / "README.md", *BOTS.iterdir(), *(ROOT / "zmqcross").rglob("*.py")]:
        if path.is_file():
            names = set(re.findall(r"ZMQCROSS_[A-Z_]*[A-Z]", path.read_text()))
            assert names - {"ZMQCROSS_TOTAL_SHARD"} <= KNOWN_VARIABLES, (path, names - KNOWN_VARIABLES)


def test_a_misspelt_variable_is_warned_about_at_start() -> None:
    env = clean_env(ZMQCROSS_AUTH_TOKEN="t", ZMQCROSS_BRIDGE_PORT=str(free_port()), ZMQCROSS_TOTAL_SHARD="8")
    result = run("status", "--connect-timeout", "1", env=env)
    assert "unknown setting ZMQCROSS_TOTAL_SHARD (did you mean ZMQCROSS_TOTAL_SHARDS?)" in result.stderr
    assert_one_line(result, 1, "zmqcross status: no answer from the bridge")


def test_a_bots_script_warns_of_a_misspelt_variable(caplog: pytest.LogCaptureFixture) -> None:
    settings = bots_settings().load(
        "bridge", argv=[], env={"ZMQCROSS_AUTH_TOKEN": "t", "ZMQCROSS_TOTAL_SHARD": "8"}
    )
    assert settings["total_shards"] == 1
    assert "unknown setting ZMQCROSS_TOTAL_SHARD (did you mean ZMQCROSS_TOTAL_SHARDS?)" in caplog.text


# --------------------------------------------------------------------------- one path for bots/ and the CLI


def bots_settings() -> ModuleType:
    """bots/settings.py, loaded the way the scripts beside it import it."""
    spec = importlib.util.spec_from_file_location("bots_settings", BOTS / "settings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("command", ["bridge", "machine", "dashboard"])
def test_bots_scripts_and_the_cli_resolve_the_same_settings(command: str, tmp_path: Path) -> None:
    load = bots_settings().load
    env = {"ZMQCROSS_AUTH_TOKEN": "t", "ZMQCROSS_BOT_FILE": "bot.py"}
    defaults = load(command, argv=[], env=env)
    assert defaults == configure([command], env).settings
    if command == "bridge":  # the old bots/settings.py said 8 shards in clusters of 2 for 2 machines
        assert (defaults["total_shards"], defaults["shards_per_cluster"], defaults["total_machines"]) == (
            1,
            1,
            1,
        )
        assert defaults["cache_paths"] is None  # no cache unless asked for
    config = tmp_path / "fleet.toml"
    config.write_text('bridge_port = 5000\nlog_level = "debug"\n')
    env = {**env, "ZMQCROSS_CONFIG": str(config), "ZMQCROSS_PUB_PORT": "6001"}
    argv = ["--keys", "/keys"]
    merged = load(command, argv=argv, env=env)
    assert merged == configure([command, *argv], env).settings
    assert (merged["bridge_port"], merged["pub_port"], merged["keys"], merged["log_level"]) == (
        5000, 6001, "/keys", "DEBUG"
    )  # fmt: skip


def test_a_missing_token_in_a_bots_script_names_the_variable() -> None:
    with pytest.raises(
        ConfigurationError, match=r"no auth token given: set --auth-token, \$ZMQCROSS_AUTH_TOKEN"
    ):
        bots_settings().load("bridge", argv=[], env={})


@pytest.mark.parametrize("script", ["bridge.py", "cluster.py", "dashboard.py"])
def test_bots_scripts_refuse_to_start_without_a_token(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BOTS / script), "--bot", "bots/bot.py"] if script == "cluster.py"
        else [sys.executable, str(BOTS / script)],
        capture_output=True, text=True, timeout=30, env=clean_env(), cwd=ROOT, check=False,
    )  # fmt: skip
    assert_one_line(
        result,
        2,
        f"{script}: no auth token given: set --auth-token, $ZMQCROSS_AUTH_TOKEN or auth_token in the config file",
    )


def test_the_cli_refuses_to_start_without_a_token() -> None:
    result = run("bridge", env=clean_env())
    assert_one_line(
        result,
        2,
        "zmqcross bridge: no auth token given: set --auth-token, $ZMQCROSS_AUTH_TOKEN or auth_token in the config file",
    )


# --------------------------------------------------------------------------- the bridge's cache


def test_cache_settings_from_file_environment_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(
        'auth_token = "t"\n[bridge]\ncache_persist_path = "/data/cache.json"\ncache_save_interval = 5\n'
        'cache_paths = [{ path = "guilds", max_size = 100 }, { path = "cooldowns", ttl = 60 }]\n'
    )
    values = configure(["bridge", "--config", str(config)], {}).settings
    assert values["cache_paths"] == (CachePath("guilds", 100), CachePath("cooldowns", DEFAULT_MAX_SIZE, 60.0))
    assert cache_options(values) == {
        "paths": values["cache_paths"],
        "persist_path": "/data/cache.json",
        "save_interval": 5.0,
    }
    # the same paths as text, in a variable or a flag: NAME[,max_size=N][,ttl=SECONDS], space-separated
    env = {"ZMQCROSS_CACHE_PATHS": "guilds,max_size=100 cooldowns,ttl=60"}
    assert (
        configure(["bridge", "--config", str(config)], env).settings["cache_paths"] == values["cache_paths"]
    )
    flagged = configure(
        [
            "bridge",
            "--config",
            str(config),
            "--cache-paths",
            "all,max_size=none",
            "--cache-save-interval",
            "1",
        ],
        env,
    ).settings
    assert flagged["cache_paths"] == (CachePath("all", None),) and flagged["cache_save_interval"] == 1.0
    # without paths there is no cache
    assert cache_options(configure(["bridge"], {"ZMQCROSS_AUTH_TOKEN": "t"}).settings) is None


@pytest.mark.parametrize(
    ("file", "env", "message"),
    [
        ("", {"ZMQCROSS_CACHE_PATHS": "guilds,max_sise=1"},
         "$ZMQCROSS_CACHE_PATHS: cache path 'guilds': unknown setting 'max_sise'; a path takes max_size and ttl"),
        ('[bridge]\ncache_paths = [{ path = "g", max_sise = 1 }]\n', {},
         "fleet.toml [bridge] cache_paths: cache path 'g': unknown setting 'max_sise'; a path takes max_size and ttl"),
        ("[bridge]\ncache_paths = [{ max_size = 1 }]\n", {}, "cache_paths: a cache path without a 'path' (its name)"),
        ("", {"ZMQCROSS_CACHE_PATHS": "guilds,max_size=ten"}, "cache path 'guilds': max_size: 'ten' is not an integer"),
        ("", {"ZMQCROSS_CACHE_PATHS": "guilds,ttl=-1"}, "cache path 'guilds': ttl: '-1' is not a positive number"),
        ("", {"ZMQCROSS_CACHE_PATHS": "guilds guilds"}, "cache path 'guilds' is declared twice"),
        ("[bridge]\ncache_paths = []\n", {}, "cache_paths: no cache path given"),
        ("[bridge.cache_paths]\nguilds = {}\n", {}, 'cache_paths: a list of paths like [{ path = "guilds"'),
        ("[bridge]\ncache_save_interval = 0\n", {}, "cache_save_interval: '0' is not a positive number"),
        ("[machine]\ncache_paths = \"g\"\n", {}, "[machine] has unknown key 'cache_paths'"),
    ],
)  # fmt: skip
def test_bad_cache_settings_say_what_and_where(
    tmp_path: Path, file: str, env: dict[str, str], message: str
) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(file)
    with pytest.raises(ConfigurationError) as caught:
        configure(["bridge", "--config", str(config), "--auth-token", "t"], env)
    assert message in str(caught.value)


def test_cache_files_without_cache_paths_are_refused() -> None:
    settings = configure(
        ["bridge", "--cache-persist-path", "/data/cache.json"], {"ZMQCROSS_AUTH_TOKEN": "t"}
    ).settings
    with pytest.raises(
        ConfigurationError,
        match=r"cache_persist_path is set but no cache path is: set --cache-paths, \$ZMQCROSS_CACHE_PATHS or "
        "cache_paths in the config file",
    ):
        cache_options(settings)
    result = run("bridge", "--cache-persist-path", "/data/cache.json", env=clean_env(ZMQCROSS_AUTH_TOKEN="t"))
    assert_one_line(result, 2, "zmqcross bridge: cache_persist_path is set but no cache path is")


@pytest.mark.parametrize("how", ["zmqcross bridge --config", "bots/bridge.py with variables"])
async def test_the_bridge_serves_a_cache_from_its_settings(how: str, tmp_path: Path) -> None:
    port, pub_port = free_port(), free_port()
    persist = tmp_path / "cache.json"
    if how.startswith("zmqcross"):
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'auth_token = "from-the-file"\nbridge_port = {port}\npub_port = {pub_port}\n'
            f'[bridge]\ncache_persist_path = "{persist}"\ncache_save_interval = 3600\n'
            '[[bridge.cache_paths]]\npath = "guilds"\nmax_size = 2\n'
            '[[bridge.cache_paths]]\npath = "cooldowns"\nttl = 60\n'
        )
        bridge = Service("bridge", ["-m", "zmqcross", "bridge", "--config", str(config)], env=clean_env())
    else:
        env = clean_env(
            ZMQCROSS_AUTH_TOKEN="from-the-file",
            ZMQCROSS_BRIDGE_PORT=str(port),
            ZMQCROSS_PUB_PORT=str(pub_port),
            ZMQCROSS_CACHE_PATHS="guilds,max_size=2 cooldowns,ttl=60",
            ZMQCROSS_CACHE_PERSIST_PATH=str(persist),
            ZMQCROSS_CACHE_SAVE_INTERVAL="3600",
        )
        bridge = Service("bridge", [str(BOTS / "bridge.py")], env=env)
    try:
        bridge.wait_line(
            rf"cache: paths guilds \(max_size 2\), cooldowns \(max_size {DEFAULT_MAX_SIZE}, ttl 60 s\); "
            rf"saved to {re.escape(str(persist))} every 3600 s"
        )
        bridge.wait_line("listening on")
        client = Client(auth_token="from-the-file", port=port, pub_port=pub_port, machine_id="tester",
                        connect_timeout=10)  # fmt: skip
        async with client:
            cache = CacheClient(client).cache
            for n in range(3):  # max_size 2: the oldest is evicted
                await cache["guilds"].set(str(n), {"n": n})
            await cache["cooldowns"].set("user:1", True)
            assert await cache["guilds"].get_many(["0", "1", "2"]) == {"1": {"n": 1}, "2": {"n": 2}}
            assert await cache["cooldowns"].get("user:1") is True
        bridge.signal(15)
        assert bridge.wait(20) == 0
    finally:
        bridge.stop()
    assert not any("Traceback" in line for line in bridge.errors), bridge.errors
    saved: dict[str, Any] = {
        name: [e.key for e in entries]
        for name, entries in decode_snapshot(persist.read_bytes()).paths.items()
    }
    assert saved == {"guilds": ["1", "2"], "cooldowns": ["user:1"]}


# --------------------------------------------------------------------------- keygen


def test_keygen_writes_a_usable_pair(tmp_path: Path) -> None:
    result = run("keygen", str(tmp_path / "keys"), "machine-1")
    assert result.returncode == 0, result.stderr
    secret = tmp_path / "keys" / "machine-1.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    public, private = zmq.auth.load_certificate(secret)
    assert private is not None and zmq.auth.load_certificate(tmp_path / "keys" / "machine-1.key")[0] == public
    again = run("keygen", str(tmp_path / "keys"), "machine-1")
    assert again.returncode == 2 and "already exists; pass overwrite=True (or --force)" in again.stderr
    assert run("keygen", "--force", str(tmp_path / "keys"), "machine-1").returncode == 0


def test_keygen_fleet_lays_out_what_keys_expects_and_keep_is_repeatable(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert run("keygen", "--fleet", "--keep", str(keys), "machine-1", "dashboard").returncode == 0
    names = sorted(p.relative_to(keys).as_posix() for p in keys.rglob("*.key*"))
    assert names == [
        "allowed/dashboard.key",
        "allowed/dashboard.key_secret",
        "allowed/machine-1.key",
        "allowed/machine-1.key_secret",
        "bridge.key",
        "bridge.key_secret",
    ]
    before = (keys / "bridge.key_secret").read_bytes()
    again = run("keygen", "--fleet", "--keep", str(keys), "machine-1", "machine-2", "dashboard")
    assert again.returncode == 0 and "kept existing pair" in again.stdout
    assert (keys / "bridge.key_secret").read_bytes() == before  # a second `docker compose up` keeps the keys
    assert (keys / "allowed" / "machine-2.key_secret").exists()
    assert run("keygen", "--force", "--keep", str(keys), "x").returncode == 2  # one or the other


def _modes(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix() or ".": stat.S_IMODE(p.stat().st_mode)
        for p in [root, *root.rglob("*")]
    }


def test_keygen_under_umask_0_writes_nothing_others_can_change(tmp_path: Path) -> None:
    # Anyone who can write to allowed/ can add a key the bridge then admits: a permissive
    # umask used to leave it (and the keys folder) world-writable.
    keys = tmp_path / "deep" / "keys"
    result = subprocess.run(
        [sys.executable, "-m", "zmqcross", "keygen", "--fleet", str(keys), "machine-1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=50,
        env=clean_env(),
        cwd=ROOT,
        umask=0,
    )
    assert result.returncode == 0, result.stderr
    modes = _modes(tmp_path / "deep")
    for name, mode in modes.items():
        assert not mode & 0o022, f"{name} is writable by others: {oct(mode)}"
    assert modes["keys/allowed"] == modes["keys"] == modes["."] == 0o755
    assert modes["keys/bridge.key_secret"] == modes["keys/allowed/machine-1.key_secret"] == 0o600
    assert modes["keys/bridge.key"] == modes["keys/allowed/machine-1.key"] == 0o644


def test_generate_keypair_under_umask_0_in_process(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        generate_keypair(tmp_path / "a" / "allowed", "dashboard")
    finally:
        os.umask(previous)
    modes = _modes(tmp_path / "a")
    assert modes == {
        ".": 0o755,
        "allowed": 0o755,
        "allowed/dashboard.key": 0o644,
        "allowed/dashboard.key_secret": 0o600,
    }


# --------------------------------------------------------------------------- the table


def test_status_table_reads_like_a_table() -> None:
    now = 1_000_000.0
    cluster = ClusterStatus(
        id=0, shards=(0, 1), pid=4242, state="ready", guilds=16, restarts=1,
        started_at=now - 125, uptime=125.0, last_heartbeat=now - 0.4, exit_code=None,
    )  # fmt: skip
    machines = (
        MachineStatus("machine-1", "bot", "10.0.0.2", now, "abc", False, False, False, (cluster,)),
        MachineStatus("machine-2", "bot", "10.0.0.3", now, None, False, True, False, ()),
        MachineStatus("dash", "dashboard", None, now, None, False, False, False, ()),
    )
    status = FleetStatus("abc", 4, 2, machines, ("machine-2",), (1,), now)
    text = render_status(status)
    assert text.splitlines()[0] == "plan abc: 4 shards in 2 clusters"
    assert re.search(r"^machine-1\s+bot\s+10\.0\.0\.2\s+abc\s+no\s+no\s*$", text, re.MULTILINE)
    assert re.search(r"^machine-2\s+bot\s+10\.0\.0\.3\s+-\s+no\s+yes\s*$", text, re.MULTILINE)
    assert re.search(r"^0\s+machine-1\s+0-1\s+4242\s+ready\s+16\s+2m05s\s+1\s+0\.4s ago$", text, re.MULTILINE)
    assert "unassigned: clusters 1" in text and "standbys: machine-2" in text
    assert "last error" not in text
    assert shard_ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    failed = dataclasses.replace(
        cluster, id=1, state="failed", last_error="Traceback (most recent call last):\nRuntimeError: no cogs"
    )
    machines = (dataclasses.replace(machines[0], clusters=(cluster, failed)), *machines[1:])
    text = render_status(dataclasses.replace(status, machines=machines))
    assert "cluster 1 on machine-1, last error:\n    Traceback (most recent call last):\n    RuntimeError: no cogs" in text

    shards = (ShardStatus(0, "ready", 0.042, 0.3, 0, 0, 0.0), ShardStatus(1, "disconnected", None, 9.5, 3, 1, 12.4))
    machines = (dataclasses.replace(machines[0], clusters=(dataclasses.replace(cluster, shard_health=shards),)),)
    zombie = dataclasses.replace(status, machines=machines)
    assert "shards down: 1 (disconnected for 12 s, cluster 0 on machine-1)" in render_status(zombie)
    lines = render_shards(zombie).splitlines()
    assert re.match(r"SHARD\s+CLUSTER\s+MACHINE\s+STATE\s+LATENCY\s+IDLE\s+DISCONNECTS\s+RESUMES$", lines[0])
    assert re.match(r"0\s+0\s+machine-1\s+ready\s+42 ms\s+0\.3s\s+0\s+0$", lines[1])
    assert re.match(r"1\s+0\s+machine-1\s+disconnected\s+-\s+9\.5s\s+3\s+1\s+DOWN for 12 s$", lines[2])


# --------------------------------------------------------------------------- errors, as a person sees them


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert message in result.stderr.splitlines()[-1], result.stderr


@pytest.fixture
def bridge(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    service = Service(
        "bridge",
        ["-m", "zmqcross", "bridge", "--port", str(port), "--pub-port", str(free_port())],
        env=clean_env(ZMQCROSS_AUTH_TOKEN="right"),
    )
    service.wait_line("listening on")
    service.port = port  # type: ignore[attr-defined]
    yield service
    assert service.stop() == 0


def test_wrong_token_is_one_line_and_exit_1(bridge: Service) -> None:
    result = run("status", "--bridge-port", str(bridge.port), env=clean_env(ZMQCROSS_AUTH_TOKEN="wrong"))  # type: ignore[attr-defined]
    assert_one_line(result, 1, "zmqcross status: wrong auth token")
    result = run(
        "machine", "--bridge-port", str(bridge.port), "--bot", "bots/bot.py",  # type: ignore[attr-defined]
        env=clean_env(ZMQCROSS_AUTH_TOKEN="wrong"),
    )  # fmt: skip
    assert_one_line(result, 1, "zmqcross machine: wrong auth token")


def test_unreachable_bridge_is_one_line_and_exit_1() -> None:
    env = clean_env(ZMQCROSS_AUTH_TOKEN="t", ZMQCROSS_BRIDGE_PORT=str(free_port()))
    result = run("machine", "--bot", "bots/bot.py", "--connect-timeout", "1", env=env)
    assert_one_line(result, 1, "zmqcross machine: no answer from the bridge at tcp://127.0.0.1:")


def test_missing_key_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = clean_env(ZMQCROSS_AUTH_TOKEN="t", ZMQCROSS_KEYS=str(tmp_path / "keys"))
    result = run("machine", "--bot", "bots/bot.py", "--machine-id", "machine-9", env=env)
    assert_one_line(
        result, 2, f"zmqcross machine: cannot read key file {tmp_path}/keys/allowed/machine-9.key_secret"
    )
    result = run("bridge", env=env)
    assert_one_line(result, 2, f"zmqcross bridge: cannot read key file {tmp_path}/keys/bridge.key_secret")
    result = run("machine", "--bot", "no/such/bot.py", env=clean_env(ZMQCROSS_AUTH_TOKEN="t"))
    assert_one_line(result, 2, "zmqcross machine: bot file 'no/such/bot.py' does not exist")


def test_port_in_use_is_a_configuration_error(bridge: Service) -> None:
    result = run("bridge", "--port", str(bridge.port), env=clean_env(ZMQCROSS_AUTH_TOKEN="t"))  # type: ignore[attr-defined]
    assert_one_line(result, 2, f"zmqcross bridge: cannot listen on 127.0.0.1 ports {bridge.port}/")  # type: ignore[attr-defined]
    assert "Address already in use" in result.stderr


# --------------------------------------------------------------------------- a fleet of commands


@pytest.mark.timeout(90)
def test_a_fleet_of_commands_with_curve_a_config_file_and_clean_shutdowns(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert run("keygen", "--fleet", str(keys), "machine-1", "dashboard").returncode == 0
    port = free_port()
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'auth_token = "from-the-file"\nkeys = "{keys}"\nbridge_port = {port}\npub_port = {free_port()}\n'
        "[bridge]\ntotal_shards = 4\nshards_per_cluster = 2\n"
        # CURVE keys get request and cache unless named: the machine hosts, the operator's key administers
        '[bridge.permissions.keys]\n"machine-*" = ["host", "eval", "request", "cache"]\n'
        'dashboard = ["admin", "request", "cache"]\n'
        f'[machine]\nmachine_id = "machine-1"\nbot_file = "{ROOT / "tests" / "fleet_bot.py"}"\nspawn_delay = 0\n'
    )
    env = clean_env(ZMQCROSS_CONFIG=str(config), ZMQCROSS_LOG_LEVEL="WARNING")
    services: list[Service] = []
    try:
        gateway = Service("gateway", ["-m", "zmqcross", "gateway", "--guilds", "40"], env=env)
        services.append(gateway)
        api = gateway.wait_line(r"ZMQCROSS_DISCORD_API=(\S+)").group(1)
        bridge = Service("bridge", ["-m", "zmqcross", "bridge"], env=env)
        services.append(bridge)
        bridge.wait_line(r"listening on tcp://127\.0\.0\.1:\d+ .*CURVE on")
        bridge.wait_line(r"plan \w+: 4 shards in 2 clusters for 1 machines")
        bridge.wait_line(
            r"permissions by CURVE key: machine-\*: cache,eval,host,request; dashboard: admin,cache,request; "
            "any other key: cache,request"
        )
        machine = Service("machine", ["-m", "zmqcross", "machine", "--discord-api", api], env=env)
        services.append(machine)
        for line in ("0/2 clusters ready", "1/2 clusters ready", "2/2 clusters ready"):
            machine.wait_line(line, timeout=40)
        machine.wait_line(r"runs clusters \[0, 1\], shards \[\[0, 1\], \[2, 3\]\]")
        bridge.wait_line("bot 'machine-1' connected from 127.0.0.1")

        shown = run("status", "--client-id", "ops", env=env)
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"^machine-1\s+bot\s+127\.0\.0\.1\s+\w+\s+no\s+no", shown.stdout, re.MULTILINE), (
            shown.stdout
        )
        assert re.search(r"^0\s+machine-1\s+0-1\s+\d+\s+ready\s+20\s", shown.stdout, re.MULTILINE), (
            shown.stdout
        )
        assert re.search(r"^1\s+machine-1\s+2-3\s+\d+\s+ready\s+20\s", shown.stdout, re.MULTILINE), (
            shown.stdout
        )
        assert "unassigned: none" in shown.stdout

        as_json = run("status", "--json", env=env)
        status = FleetStatus.from_json(json.loads(as_json.stdout))
        assert [c.guilds for m in status.machines for c in m.clusters] == [20, 20]

        resharded = run("reshard", "--total-shards", "6", env=env)
        assert resharded.returncode == 0, resharded.stderr
        assert re.match(r"plan \w+: 6 shards in 3 clusters", resharded.stdout)
        machine.wait_line(r"assigned clusters \[0, 1, 2\]: reshard to 6 shards")
        end = time.monotonic() + 40
        while True:  # the rolling restart ends with three clusters on the new plan
            status = FleetStatus.from_json(json.loads(run("status", "--json", env=env).stdout))
            clusters = [c for m in status.machines for c in m.clusters]
            if [(c.shards, c.state) for c in clusters] == [
                ((0, 1), "ready"),
                ((2, 3), "ready"),
                ((4, 5), "ready"),
            ]:
                break
            assert time.monotonic() < end, clusters
            time.sleep(0.3)

        pids = {c.id: c.pid for c in clusters}
        restarted = run("restart", "--clusters", "1", env=env)
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.splitlines()[0] == "restarting 1/1: cluster 1 on machine-1", restarted.stdout
        assert re.search(r"^restarted 1 cluster\(s\) in [\d.]+ s$", restarted.stdout, re.MULTILINE)
        status = FleetStatus.from_json(json.loads(run("status", "--json", env=env).stdout))
        after = {c.id: c.pid for m in status.machines for c in m.clusters}
        assert after[1] != pids[1] and {0: after[0], 2: after[2]} == {0: pids[0], 2: pids[2]}
        again = run("restart", "--clusters", "7", env=env)  # no such cluster: a clear refusal
        assert again.returncode != 0 and "no machine runs cluster(s) [7]; running: [0, 1, 2]" in again.stderr

        machine.signal(15)
        assert machine.wait(30) == 0
        machine.wait_line("drained and stopped")
        bridge.wait_line("bot 'machine-1' disconnected")
        for service in (bridge, gateway):
            service.signal(2)  # SIGINT, as Ctrl-C would
            assert service.wait(20) == 0
        bridge.wait_line("bridge: closed")
        assert not any("Traceback" in line for s in services for line in s.errors)
    finally:
        for service in services:
            service.stop()


# --------------------------------------------------------------------------- permissions


def test_permissions_from_file_environment_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(
        'auth_token = "t"\n'
        "[bridge.permissions]\n"
        'default = ["request"]\n'
        'token = ["request", "cache"]\n'
        "[bridge.permissions.keys]\n"
        '"machine-*" = ["host", "eval", "request", "cache"]\n'
        'ops = "all"\n'
        "[bridge.permissions.agents]\n"
        'dashboard = ["request", "cache"]\n'
    )
    argv = ["bridge", "--config", str(config)]
    policy = configure(argv, {}).settings["permissions"]
    assert policy == AccessPolicy(
        keys={"machine-*": ["host", "eval", "request", "cache"], "ops": ACTIONS},
        agents={"dashboard": ["request", "cache"]},
        default=["request"],
        token=["request", "cache"],
    )
    assert policy.for_key("machine-7") == {"host", "eval", "request", "cache"}
    assert policy.for_key("stranger") == {"request"}

    # the same as text in a variable or a flag: WHO=ACTIONS rules separated by ";"
    text = "machine-*=host,eval,request,cache; ops=all; agent:dashboard=request,cache; default=request; token=none"
    from_env = configure(argv, {"ZMQCROSS_PERMISSIONS": text}).settings["permissions"]
    assert from_env == AccessPolicy(
        keys={"machine-*": ["host", "eval", "request", "cache"], "ops": ACTIONS},
        agents={"dashboard": ["request", "cache"]},
        default=["request"],
        token=[],
    )
    flagged = configure([*argv, "--permissions", "key:default=admin;host-1:bot=host"], {}).settings
    assert flagged["permissions"] == AccessPolicy(keys={"default": ["admin"], "host-1:bot": ["host"]})
    # nothing given: the bridge's own default policy
    assert configure(["bridge"], {"ZMQCROSS_AUTH_TOKEN": "t"}).settings["permissions"] is None


@pytest.mark.parametrize(
    ("file", "env", "message"),
    [
        ("", {"ZMQCROSS_PERMISSIONS": "machine-*=host,evl"},
         "$ZMQCROSS_PERMISSIONS: machine-*: unknown action 'evl'; actions are admin, cache, eval, host, request"),
        ('[bridge.permissions]\ndefualt = ["request"]\n', {},
         "fleet.toml [bridge] permissions: unknown key 'defualt'; the table takes default, token, keys, agents"),
        ('[bridge.permissions.keys]\nops = ["root"]\n', {},
         "fleet.toml [bridge] permissions: keys.ops: unknown action 'root'"),
        ("[bridge.permissions.keys]\nops = 3\n", {},
         'keys.ops: a list of actions like ["request", "cache"], or "all" or "none", not 3'),
        ('[bridge.permissions]\nkeys = ["ops"]\n', {}, "permissions: keys is a table of NAME = [ACTIONS]"),
        ("", {"ZMQCROSS_PERMISSIONS": "machine-*"}, "'machine-*' is not WHO=ACTIONS"),
        ("", {"ZMQCROSS_PERMISSIONS": "ops=admin;ops=eval"}, "ops is given twice"),
        ("", {"ZMQCROSS_PERMISSIONS": "ops="}, "ops: no action given (none grants nothing)"),
        ("", {"ZMQCROSS_PERMISSIONS": " ; "}, "no permission rule given"),
        ('[machine]\npermissions = "ops=all"\n', {}, "[machine] has unknown key 'permissions'"),
    ],
)  # fmt: skip
def test_bad_permissions_say_what_and_where(
    tmp_path: Path, file: str, env: dict[str, str], message: str
) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(file)
    with pytest.raises(ConfigurationError) as caught:
        configure(["bridge", "--config", str(config), "--auth-token", "t"], env)
    assert message in str(caught.value)


def test_a_curve_bridge_where_no_key_may_host_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from zmqcross.cli.serve import build_bridge

    keys = tmp_path / "keys"
    generate_keypair(keys, "bridge")
    generate_keypair(keys / "allowed", "machine-1")
    env = {"ZMQCROSS_AUTH_TOKEN": "t", "ZMQCROSS_KEYS": str(keys)}
    with caplog.at_level("WARNING", logger="zmqcross.cli"):
        build_bridge(configure(["bridge"], env).settings)
    assert "no CURVE key may host clusters: machines will be refused their shards" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="zmqcross.cli"):
        build_bridge(
            configure(["bridge", "--permissions", "machine-*=host,eval,request,cache"], env).settings
        )
        build_bridge(
            configure(["bridge"], {"ZMQCROSS_AUTH_TOKEN": "t"}).settings
        )  # no CURVE: the token hosts
    assert "may host" not in caplog.text


# --------------------------------------------------------------------------- a person at a terminal


def test_a_machine_waiting_for_its_bridge_says_so_within_seconds() -> None:
    port = free_port()
    env = clean_env(ZMQCROSS_AUTH_TOKEN="t", ZMQCROSS_BRIDGE_PORT=str(port))
    machine = Service("machine", ["-m", "zmqcross", "machine", "--bot", "bots/bot.py"], env=env)
    try:
        started = time.monotonic()
        machine.wait_line(
            rf"waiting for the bridge at 127\.0\.0\.1:{port} \(giving up after 30 s\)", timeout=5
        )
        assert time.monotonic() - started < 4
    finally:
        machine.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_closed_stdout_ends_quietly_with_the_drains_exit_code(
    bridge: Service, tmp_path: Path, signum: int
) -> None:
    # `zmqcross machine ... | tee log`, then Ctrl-C: tee is gone before the drain's last line.
    gateway = Service("gateway", ["-m", "zmqcross", "gateway", "--guilds", "10"], env=clean_env())
    errors = tmp_path / "stderr"
    try:
        api = gateway.wait_line(r"ZMQCROSS_DISCORD_API=(\S+)").group(1)
        env = clean_env(
            ZMQCROSS_AUTH_TOKEN="right", ZMQCROSS_BRIDGE_PORT=str(bridge.port),  # type: ignore[attr-defined]
            ZMQCROSS_DISCORD_API=api, ZMQCROSS_SPAWN_DELAY="0", ZMQCROSS_LOG_LEVEL="WARNING",
        )  # fmt: skip
        with errors.open("w") as stderr:
            machine = subprocess.Popen(
                [sys.executable, "-m", "zmqcross", "machine", "--bot", str(ROOT / "tests" / "fleet_bot.py")],
                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
            )  # fmt: skip
        try:
            assert machine.stdout is not None
            for line in machine.stdout:
                if "runs clusters" in line:
                    break
            machine.stdout.close()  # the reader is gone
            os.killpg(machine.pid, signum)  # as a terminal's Ctrl-C reaches the whole group
            assert machine.wait(40) == 0, errors.read_text()
        finally:
            if machine.poll() is None:
                os.killpg(machine.pid, signal.SIGKILL)
                machine.wait(10)
        said = errors.read_text()
        assert "Traceback" not in said and "Broken pipe" not in said and "BrokenPipe" not in said, said
    finally:
        gateway.stop()
