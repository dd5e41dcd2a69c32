"""Settings of the ``zmqcross`` commands, merged from four places.

Lowest to highest precedence: built-in defaults, a TOML file (``--config`` or
``$ZMQCROSS_CONFIG``), ``ZMQCROSS_*`` environment variables, command-line flags. The
example scripts in ``bots/`` resolve their settings with this same code (through
:func:`zmqcross.cli.settings_for`), so one file and one environment configure the
scripts and the commands alike, with the same defaults and the same errors.

The TOML file has top-level keys, shared by every command, and one table per command
whose keys override them for that command only::

    auth_token = "a long random string"
    bridge_host = "10.0.0.1"
    keys = "/etc/zmqcross/keys"

    [bridge]
    listen_host = "0.0.0.0"
    total_shards = "auto"
    cache_persist_path = "/var/lib/zmqcross/cache.json"
    cache_paths = [{ path = "guilds", max_size = 10000 }, { path = "cooldowns", ttl = 60 }]

    [bridge.permissions]                  # what each CURVE key may do (zmqcross.AccessPolicy)
    default = ["request", "cache"]        # a key not named below
    [bridge.permissions.keys]
    "machine-*" = ["host", "eval", "request", "cache"]
    ops = "all"

    [machine]
    machine_id = "machine-1"
    bot_file = "/srv/bot/bot.py"

Everything here is pure except :func:`load_file`: :func:`resolve` takes the file's data,
the environment and the flags as plain mappings and returns the values, so what wins
where is tested without processes.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._cachestore import CachePath
from .errors import ConfigurationError
from .security import ACTIONS, AccessPolicy

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "PRECEDENCE",
    "Setting",
    "boolean",
    "cache_paths",
    "cache_paths_data",
    "check_file",
    "host_names",
    "host_names_data",
    "load_file",
    "log_level",
    "non_negative_int",
    "non_negative_number",
    "permissions",
    "permissions_data",
    "port",
    "positive_int",
    "positive_number",
    "resolve",
    "shard_count",
    "text",
    "unknown_variables",
]

ENV_PREFIX = "ZMQCROSS_"
"""The prefix of every environment variable zmqcross reads."""

CONFIG_ENV = "ZMQCROSS_CONFIG"
"""The environment variable naming a TOML file when ``--config`` is not given."""

PRECEDENCE = (
    "Settings come from, lowest to highest precedence: built-in defaults; the TOML file given "
    f"by --config (or ${CONFIG_ENV}), its top-level keys first, then its [COMMAND] table; "
    "ZMQCROSS_* environment variables (an empty one counts as unset); command-line flags. "
    "Each option below names its environment variable; its TOML key is the variable's name "
    "without ZMQCROSS_, in lower case."
)


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting of a command: where it is read from and how its text becomes a value.

    ``name`` is the TOML key; ``env`` the environment variable; ``flag`` the command-line
    flag (default ``--`` + name with dashes). ``parse`` turns text (from a flag, the
    environment or the file) into the value, raising ``ValueError`` with a reason.
    ``parse_data``, when given, takes what the file holds that is not a single value (a
    list or a table), for settings with a richer TOML form than their text.
    """

    name: str
    env: str | None
    parse: Callable[[str], Any]
    help: str
    default: Any = None
    flag: str | None = None
    metavar: str | None = None
    required: bool = False
    parse_data: Callable[[Any], Any] | None = None

    @property
    def option(self) -> str:
        """The command-line flag."""
        return self.flag or "--" + self.name.replace("_", "-")

    def sources(self) -> str:
        """Where a user can set this, for error messages."""
        where = [self.option]
        if self.env:
            where.append(f"${self.env}")
        where.append(f"{self.name} in the config file")
        return ", ".join(where[:-1]) + " or " + where[-1]


# --------------------------------------------------------------------------- parsers
# Each takes text and returns the value or raises ValueError saying what was expected.


def text(value: str) -> str:
    """Any non-empty string."""
    if not value:
        raise ValueError("must not be empty")
    return value


def _int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an integer") from None


def _number(value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def port(value: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port)."""
    number = _int(value)
    if not 0 <= number <= 65535:
        raise ValueError(f"{number} is not a TCP port (0 to 65535)")
    return number


def positive_int(value: str) -> int:
    """An integer of at least 1."""
    number = _int(value)
    if number < 1:
        raise ValueError(f"{number} is not a positive integer")
    return number


def non_negative_int(value: str) -> int:
    """An integer of at least 0."""
    number = _int(value)
    if number < 0:
        raise ValueError(f"{number} is negative")
    return number


def positive_number(value: str) -> float:
    """A number of seconds above zero."""
    number = _number(value)
    if not number > 0:
        raise ValueError(f"{value!r} is not a positive number")
    return number


def non_negative_number(value: str) -> float:
    """A number of seconds, zero or more."""
    number = _number(value)
    if not number >= 0:
        raise ValueError(f"{value!r} is negative")
    return number


def shard_count(value: str) -> int | str:
    """A positive integer, or ``auto`` (ask Discord)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(value)
    except ValueError:
        raise ValueError(f'{value!r} is neither a positive integer nor "auto"') from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def boolean(value: str) -> bool:
    """1/true/yes/on or 0/false/no/off, in any case."""
    folded = value.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a yes/no value ({'/'.join(_TRUE)} or {'/'.join(_FALSE)})")


def log_level(value: str) -> str:
    """A logging level name: DEBUG, INFO, WARNING, ERROR or CRITICAL."""
    name = value.strip().upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"{value!r} is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return name


def _host_name(name: str) -> str:
    if not name:
        raise ValueError("an empty host name")
    if "/" in name or "@" in name or (name.count(":") == 1 and not name.startswith("[")):
        raise ValueError(f"{name!r} is not a host name (give the name only: no scheme, path or port)")
    return name.lower()


def host_names(value: str) -> tuple[str, ...]:
    """Host names, separated by commas or spaces: ``dash.example.com,10.0.0.5`` (``*``: any)."""
    names = tuple(_host_name(n) for n in value.replace(",", " ").split())
    if not names:
        raise ValueError("no host name given")
    return names


def host_names_data(value: Any) -> tuple[str, ...]:
    """Host names as TOML data: ``["dash.example.com", "10.0.0.5"]``."""
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ValueError(f'a list of host names like ["dash.example.com"], not {value!r}')
    return tuple(_host_name(n.strip()) for n in value)


# --------------------------------------------------------------------------- cache paths
# A bridge's cache paths as text (a flag, a variable): space-separated, each
# NAME[,max_size=N|none][,ttl=SECONDS|none]. In TOML, also a list of tables
# [{ path = NAME, max_size = N, ttl = SECONDS }], the dicts CacheServer(paths=...) takes.

_PATH_FIELDS = ("max_size", "ttl")


def _max_size(value: object) -> int | None:
    if isinstance(value, str):
        return None if value.strip().lower() == "none" else positive_int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return positive_int(str(value))
    raise ValueError(f"{value!r} is not a positive integer or none")


def _ttl(value: object) -> float | None:
    if isinstance(value, str):
        return None if value.strip().lower() == "none" else positive_number(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return positive_number(str(value))
    raise ValueError(f"{value!r} is not a positive number of seconds or none")


def _cache_path(name: object, fields: Mapping[str, object]) -> CachePath:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a cache path's name must be non-empty text, not {name!r}")
    unknown = [key for key in fields if key not in _PATH_FIELDS]
    if unknown:
        raise ValueError(
            f"cache path {name!r}: unknown setting {', '.join(repr(k) for k in unknown)}; "
            f"a path takes {' and '.join(_PATH_FIELDS)}"
        )
    options: dict[str, Any] = {}
    for key, check in (("max_size", _max_size), ("ttl", _ttl)):
        if key in fields:
            try:
                options[key] = check(fields[key])
            except ValueError as exc:
                raise ValueError(f"cache path {name!r}: {key}: {exc}") from None
    try:
        return CachePath(name, **options)
    except ConfigurationError as exc:  # the name's length, checked where every path is made
        raise ValueError(exc.message) from None


def _distinct(paths: list[CachePath]) -> tuple[CachePath, ...]:
    if not paths:
        raise ValueError("no cache path given")
    seen: set[str] = set()
    for path in paths:
        if path.name in seen:
            raise ValueError(f"cache path {path.name!r} is declared twice")
        seen.add(path.name)
    return tuple(paths)


def cache_paths(value: str) -> tuple[CachePath, ...]:
    """Cache paths as text: ``guilds,max_size=10000 cooldowns,ttl=60`` (space-separated)."""
    paths = []
    for spec in value.split():
        name, *pairs = spec.split(",")
        fields: dict[str, str] = {}
        for pair in pairs:
            key, equals, setting = pair.partition("=")
            if not equals:
                raise ValueError(f"cache path {name!r}: {pair!r} is not KEY=VALUE (max_size=N, ttl=SECONDS)")
            fields[key.strip()] = setting
        paths.append(_cache_path(name, fields))
    return _distinct(paths)


def cache_paths_data(value: Any) -> tuple[CachePath, ...]:
    """Cache paths as TOML data: ``[{ path = "guilds", max_size = 10000 }, ...]``."""
    if not isinstance(value, list):
        raise ValueError(
            'a list of paths like [{ path = "guilds", max_size = 10000, ttl = 60 }], '
            f"not a {'table' if isinstance(value, dict) else type(value).__name__}"
        )
    paths = []
    for item in value:
        if not isinstance(item, dict):
            raise ValueError(f'each cache path is a table like {{ path = "guilds" }}, not {item!r}')
        if "path" not in item:
            raise ValueError(f"a cache path without a 'path' (its name): {item!r}")
        fields = {k: v for k, v in item.items() if k != "path"}
        paths.append(_cache_path(item["path"], fields))
    return _distinct(paths)


# --------------------------------------------------------------------------- permissions
# A bridge's AccessPolicy as text (a flag, a variable): rules separated by ";", each
# WHO=ACTIONS with the actions comma-separated, or all, or none. WHO is a CURVE key name or
# fnmatch pattern (machine-*), default (a key no rule names), token (every peer when
# CURVE is off), agent:NAME (narrows that agent), or key:NAME for a key named like one of
# those words. In TOML also a table: [bridge.permissions] with default and token, and the
# tables [bridge.permissions.keys] and [bridge.permissions.agents] of NAME = [ACTIONS].

_POLICY_TABLE = ("default", "token", "keys", "agents")
_ALL, _NONE = "all", "none"


def _action_set(where: str, value: object) -> frozenset[str]:
    if isinstance(value, str):
        names = value.replace(",", " ").split()
    elif isinstance(value, list) and all(isinstance(a, str) for a in value):
        names = [a.strip() for a in value]
    else:
        raise ValueError(
            f'{where}: a list of actions like ["request", "cache"], or "all" or "none", not {value!r}'
        )
    if names in ([_ALL], [_NONE]):
        return ACTIONS if names == [_ALL] else frozenset()
    if not names and isinstance(value, str):
        raise ValueError(f"{where}: no action given ({_NONE} grants nothing)")
    for name in names:
        if name not in ACTIONS:
            raise ValueError(
                f"{where}: unknown action {name!r}; actions are {', '.join(sorted(ACTIONS))} "
                f"(or {_ALL}, or {_NONE})"
            )
    return frozenset(names)


def _policy(
    keys: dict[str, frozenset[str]],
    agents: dict[str, frozenset[str]],
    default: frozenset[str] | None,
    token: frozenset[str] | None,
) -> AccessPolicy:
    given: dict[str, Any] = {"keys": keys, "agents": agents}
    if default is not None:
        given["default"] = default
    if token is not None:
        given["token"] = token
    return AccessPolicy(**given)


def permissions(value: str) -> AccessPolicy:
    """An access policy as text: ``machine-*=host,eval,request,cache;ops=all;default=request,cache``."""
    keys: dict[str, frozenset[str]] = {}
    agents: dict[str, frozenset[str]] = {}
    plain: dict[str, frozenset[str]] = {}
    seen: set[str] = set()
    for rule in (r.strip() for r in value.split(";")):
        if not rule:
            continue
        who, equals, actions = (part.strip() for part in rule.partition("="))
        if not equals or not who:
            raise ValueError(f"{rule!r} is not WHO=ACTIONS (like machine-*=host,eval,request,cache)")
        if who in seen:
            raise ValueError(f"{who} is given twice")
        seen.add(who)
        granted = _action_set(who, actions)
        prefix, _, name = who.partition(":")
        if who in ("default", "token"):
            plain[who] = granted
        elif prefix == "agent" and name:
            agents[name] = granted
        elif prefix == "key" and name:
            keys[name] = granted
        else:  # a key name or pattern; machine ids (HOST:bot) name keys too, colon and all
            keys[who] = granted
    if not seen:
        raise ValueError("no permission rule given (WHO=ACTIONS, separated by ;)")
    return _policy(keys, agents, plain.get("default"), plain.get("token"))


def _named(where: str, value: object) -> dict[str, frozenset[str]]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is a table of NAME = [ACTIONS], not {value!r}")
    return {str(name): _action_set(f"{where}.{name}", actions) for name, actions in value.items()}


def permissions_data(value: Any) -> AccessPolicy:
    """An access policy as TOML data: ``{default = [...], token = [...], keys = {...}, agents = {...}}``."""
    if not isinstance(value, dict):
        raise ValueError(f"a table [bridge.permissions] or a text of WHO=ACTIONS rules, not {value!r}")
    unknown = [key for key in value if key not in _POLICY_TABLE]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; the table takes {', '.join(_POLICY_TABLE)}")
    return _policy(
        _named("keys", value.get("keys", {})),
        _named("agents", value.get("agents", {})),
        _action_set("default", value["default"]) if "default" in value else None,
        _action_set("token", value["token"]) if "token" in value else None,
    )


# --------------------------------------------------------------------------- the file


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML file; a missing or malformed file is a :class:`ConfigurationError`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read config file {os.fspath(path)}: {exc.strerror or exc}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {os.fspath(path)} is not valid TOML: {exc}") from None


def check_file(data: Mapping[str, Any], commands: Mapping[str, Sequence[Setting]], path: str) -> None:
    """Refuse keys no command knows, so a misspelt key fails loudly instead of being ignored.

    A top-level key must be known to some command; a key in a ``[command]`` table to that
    command.
    """
    everywhere = {s.name for settings in commands.values() for s in settings}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in commands:
                raise ConfigurationError(f"{path}: unknown table [{key}]; tables are {sorted(commands)}")
            known = {s.name for s in commands[key]}
            for name in value:
                if name not in known:
                    raise ConfigurationError(
                        f"{path}: [{key}] has unknown key {name!r}; {key} takes {sorted(known)}"
                    )
        elif key not in everywhere:
            raise ConfigurationError(f"{path}: unknown key {key!r}")


def unknown_variables(env: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """A warning for each ``ZMQCROSS_*`` variable of ``env`` that is not in ``known``, with the nearest name.

    A warning, not an error (the file's unknown keys are errors): the environment is
    shared with what zmqcross does not own (a bot's own ``ZMQCROSS_``-named variables,
    an env file written for a newer version), and refusing to start over a name that may
    be someone else's would stop a fleet that runs. A misspelt setting is still said out
    loud at start instead of being silently ignored.
    """
    names = sorted(set(known))
    warnings = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in names:
            continue
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(
            f"unknown setting {name}{hint}; it is ignored (`zmqcross COMMAND --help` lists each variable)"
        )
    return warnings


# --------------------------------------------------------------------------- merging


def _from_file(setting: Setting, value: Any, where: str) -> Any:
    if isinstance(value, (list, dict)) and setting.parse_data is not None:
        try:
            return setting.parse_data(value)
        except ValueError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    # TOML gives typed scalars; every parser takes text, so typed values go through str().
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        value = str(value)
    elif not isinstance(value, str):
        raise ConfigurationError(f"{where}: expected a single value, not {type(value).__name__}")
    try:
        return setting.parse(value)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def resolve(
    command: str,
    settings: Sequence[Setting],
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file: Mapping[str, Any],
    path: str = "the config file",
) -> dict[str, Any]:
    """Each setting's value: its flag, else its environment variable, else the file, else the default.

    ``flags`` holds only the flags given, already parsed (argparse did it). Raises
    :class:`ConfigurationError` naming the variable or key whose value is bad, or the
    ways to set a required setting that is missing.
    """
    table = file.get(command, {})
    values: dict[str, Any] = {}
    for setting in settings:
        name = setting.name
        from_env = env.get(setting.env, "") if setting.env else ""
        if name in flags:
            value = flags[name]
        elif from_env:
            try:
                value = setting.parse(from_env)
            except ValueError as exc:
                raise ConfigurationError(f"${setting.env}: {exc}") from None
        elif name in table:
            value = _from_file(setting, table[name], f"{path} [{command}] {name}")
        elif name in file and not isinstance(file[name], dict):
            value = _from_file(setting, file[name], f"{path} {name}")
        else:
            value = setting.default
        values[name] = value
    for setting in settings:  # after every given value was checked: a bad one is the better hint
        if setting.required and values[setting.name] is None:
            raise ConfigurationError(f"no {setting.name.replace('_', ' ')} given: set {setting.sources()}")
    return values
