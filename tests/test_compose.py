"""bots/docker-compose.yml and bots/Dockerfile agree with the CLI and the repository.

No Docker engine runs here, so the files are checked the way the engine would read them:
the compose file's variables are substituted, each service's command is parsed by the
real `zmqcross` parser and merged with the service's environment, and the settings the
services would run with are compared (ports, hosts, key paths). The Dockerfile's COPY
sources must exist in the build context and survive its ignore file.
"""

from __future__ import annotations

import configparser
import fnmatch
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml  # noqa: E402 - the test extra brings PyYAML

from zmqcross.cli import configure
from zmqcross.cli.options import cache_options

ROOT = Path(__file__).resolve().parent.parent
BOTS = ROOT / "bots"
TOKEN = {"ZMQCROSS_AUTH_TOKEN": "0123456789abcdef"}  # no default: compose refuses to start without it
OFFLINE: dict[str, str] = {**TOKEN}  # `docker compose --profile offline up`: every other default
DISCORD = {
    **TOKEN,
    "DISCORD_TOKEN": "real-token",
    "ZMQCROSS_DISCORD_API": "",
}  # the README's real-Discord line


class MissingVariable(Exception):
    """What compose stops with for ${VAR:?message} (unset or empty) and ${VAR?message} (unset)."""


def substitute(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default} (unset or empty), ${VAR-default} (unset),
    ${VAR:?message} (unset or empty: refuse) and ${VAR?message} (unset: refuse)."""
    if isinstance(value, dict):
        return {k: substitute(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(found: re.Match[str]) -> str:
        name, op, default = found.group(1), found.group(2), found.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if (op == ":?" and not env.get(name)) or (op == "?" and name not in env):
            raise MissingVariable(f"required variable {name} is missing a value: {default}")
        return env.get(name, "")

    return re.sub(r"\$\{(\w+)(?:(:-|-|:\?|\?)([^}]*))?\}", one, value)


def load(env: dict[str, str]) -> dict[str, Any]:
    return substitute(yaml.safe_load((BOTS / "docker-compose.yml").read_text()), env)  # type: ignore[no-any-return]


def started(compose: dict[str, Any], profiles: set[str]) -> dict[str, Any]:
    return {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


def settings_of(service: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The command and merged settings this service's `zmqcross` would run with."""
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    try:
        invocation = configure(service["command"], env)
    except SystemExit:  # argparse printed why on stderr
        pytest.fail(f"`zmqcross {shlex.join(service['command'])}` is not a valid command line")
    return invocation.command, {**invocation.settings, "args": invocation.args}


def keys_mount(service: dict[str, Any]) -> tuple[str, bool]:
    """Where the keys volume is mounted in ``service``, and whether read-only."""
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[0] == "keys":
            return parts[1], parts[2:] == ["ro"]
    raise AssertionError(f"no keys volume in {service['command']}")


@pytest.fixture(params=["offline", "discord"])
def mode(request: pytest.FixtureRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    env, profiles = (OFFLINE, {"offline"}) if request.param == "offline" else (DISCORD, set())
    compose = load(env)
    return compose, started(compose, profiles)


def test_the_services_of_the_demo(mode: tuple[dict[str, Any], dict[str, Any]]) -> None:
    compose, services = mode
    assert set(compose["services"]) == {"keygen", "gateway", "bridge", "machine-1", "machine-2", "dashboard"}
    assert compose["services"]["gateway"]["profiles"] == ["offline"]  # left out against real Discord
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in compose["services"], (name, needed)
            if needed not in services:
                assert service["depends_on"][needed].get("required") is False, (name, needed)
    commands = {name: settings_of(service)[0] for name, service in services.items()}
    assert sorted(commands.values()).count("machine") == 2
    assert (
        commands["keygen"] == "keygen"
        and commands["bridge"] == "bridge"
        and commands["dashboard"] == "dashboard"
    )


def test_every_service_parses_with_the_real_cli(mode: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, services = mode
    for name, service in services.items():
        command, _ = settings_of(service)
        assert service["command"][0] == command, name


def test_hosts_and_ports_agree(mode: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, services = mode
    _, bridge = settings_of(services["bridge"])
    assert bridge["listen_host"] == "0.0.0.0"  # other containers reach it
    for name in ("machine-1", "machine-2", "dashboard"):
        _, client = settings_of(services[name])
        assert client["bridge_host"] == "bridge", name
        assert client["bridge_port"] == bridge["bridge_port"], name
        assert client["pub_port"] == bridge["pub_port"], name
        assert client["auth_token"] == bridge["auth_token"], name
    machine_ids = [settings_of(services[n])[1]["machine_id"] for n in ("machine-1", "machine-2")]
    assert machine_ids == ["machine-1", "machine-2"]


def test_offline_discord_is_the_gateway_and_real_discord_needs_only_the_token() -> None:
    offline = started(load(OFFLINE), {"offline"})
    gateway = settings_of(offline["gateway"])[1]
    assert gateway["gateway_host"] == "0.0.0.0"
    api = f"http://gateway:{gateway['gateway_port']}/api/v10"
    assert f"{gateway['gateway_port']}/api/v10/gateway" in " ".join(offline["gateway"]["healthcheck"]["test"])
    for name in ("bridge", "machine-1", "machine-2"):
        assert settings_of(offline[name])[1]["discord_api"] == api, name
    bridge = settings_of(offline["bridge"])[1]
    # "auto" asks the gateway, which recommends --shards-hint shards
    assert bridge["total_shards"] == "auto" and bridge["discord_token"]
    assert gateway["gateway_shards_hint"] == 8

    real = started(load(DISCORD), set())
    assert "gateway" not in real
    for name in ("bridge", "machine-1", "machine-2"):
        settings = settings_of(real[name])[1]
        assert settings["discord_api"] is None and settings["discord_token"] == "real-token", name


def test_key_paths_agree(mode: tuple[dict[str, Any], dict[str, Any]]) -> None:
    compose, services = mode
    assert "keys" in compose["volumes"]
    command, keygen = settings_of(services["keygen"])
    args = keygen["args"]
    where, read_only = keys_mount(services["keygen"])
    assert args.fleet and args.keep and args.directory == where and not read_only
    made = set(args.names)
    for name in ("bridge", "machine-1", "machine-2", "dashboard"):
        service = services[name]
        command, settings = settings_of(service)
        mounted, read_only = keys_mount(service)
        assert settings["keys"] == mounted and read_only, name
        assert service["depends_on"]["keygen"]["condition"] == "service_completed_successfully", name
        if command == "machine":
            assert (settings["key_name"] or settings["machine_id"]) in made, name
        elif command in ("status", "dashboard"):
            assert settings["dashboard_key"] in made


def test_the_bridge_policy_lets_each_key_do_its_job(mode: tuple[dict[str, Any], dict[str, Any]]) -> None:
    # CURVE keys the policy does not name may only request and use the cache: the machines'
    # keys must be named to host clusters, the dashboard's to time evals.
    _, services = mode
    _, bridge = settings_of(services["bridge"])
    policy = bridge["permissions"]
    assert policy is not None and bridge["keys"]
    for name, service in services.items():
        command, settings = settings_of(service)
        if command == "machine":
            rights = policy.for_key(settings["key_name"] or settings["machine_id"])
            assert {"host", "eval", "request", "cache"} <= rights and "admin" not in rights, name
        elif command == "dashboard":
            rights = policy.for_key(settings["dashboard_key"])
            assert {"eval", "request"} <= rights and not {"host", "admin"} & rights, name
    assert policy.for_key("someone-else") == {"request", "cache"}  # least privilege stays the default


def test_the_auth_token_has_no_default() -> None:
    with pytest.raises(MissingVariable, match="required variable ZMQCROSS_AUTH_TOKEN is missing a value"):
        load({})
    with pytest.raises(MissingVariable, match="ZMQCROSS_AUTH_TOKEN"):
        load({"ZMQCROSS_AUTH_TOKEN": ""})


def test_the_bridge_serves_a_cache_persisted_in_a_volume(mode: tuple[dict[str, Any], dict[str, Any]]) -> None:
    compose, services = mode
    _, bridge = settings_of(services["bridge"])
    options = cache_options(bridge)
    assert options is not None and [p.name for p in options["paths"]] == ["guilds", "cooldowns"]
    folder = str(PurePosixPath(options["persist_path"]).parent)
    mounts = {v.split(":")[1]: v.split(":") for v in services["bridge"]["volumes"]}
    assert folder in mounts, mounts
    volume, _, *options_ = mounts[folder]
    assert volume in compose["volumes"] and "ro" not in options_  # named, so it outlives the container
    # A fresh named volume takes the ownership of the image's folder: the user must own it.
    user = next(arg for op, arg in dockerfile() if op == "USER")
    assert any(
        op == "RUN"
        and re.search(rf"mkdir [^&]*{folder}\b", arg)
        and re.search(rf"chown {user} [^&]*{folder}\b", arg)
        for op, arg in dockerfile()
    )


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (BOTS / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out (last matching pattern wins, ! re-includes)."""
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            out = not negate
    return out


def test_the_dockerfile_builds_from_the_repository_only() -> None:
    compose = load(OFFLINE)
    build = compose["services"]["bridge"]["build"]
    context = (BOTS / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]) == BOTS / "Dockerfile"
    patterns = [
        line.strip()
        for line in (BOTS / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    workdir, copied, installed = "/", [], False
    for op, arg in instructions:
        if op == "WORKDIR":
            workdir = arg
        elif op == "COPY":
            *sources, _ = shlex.split(arg)
            for source in sources:
                assert not source.startswith("--"), "COPY --from would bring files from outside the repo"
                assert (context / source).exists(), f"COPY {source}: not in the repository"
                assert not ignored(source, patterns), f"COPY {source}: left out by Dockerfile.dockerignore"
                copied.append(source)
        elif op == "RUN" and re.search(r"\bpip install \.(\s|$)", arg):
            assert workdir == "/app" and {"setup.cfg", "pyproject.toml", "zmqcross"} <= set(copied)
            installed = True
    assert installed, "the image must pip install the repository"
    # setup.cfg reads these files while installing
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    for field in setup["metadata"].values():
        if field.startswith("file:"):
            assert field.removeprefix("file:").strip() in copied
    # the services' commands are arguments of the entry point: the console script
    assert ("ENTRYPOINT", '["zmqcross"]') in instructions
    assert "zmqcross = zmqcross.cli:main" in setup["options.entry_points"]["console_scripts"]
    # the machines' bot file is in the image
    bot = settings_of(compose["services"]["machine-1"])[1]["bot_file"]
    assert bot.startswith(workdir + "/") and (ROOT / bot.removeprefix(workdir + "/")).is_file()
    assert "bots" in copied
