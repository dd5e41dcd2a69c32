"""The ``zmqcross`` command line (also ``python -m zmqcross``).

::

    zmqcross bridge     the bridge: plans the shards, lets machines in
    zmqcross machine    a whole machine: agent + clusters running a bot file
    zmqcross gateway    an offline Discord with synthetic guilds
    zmqcross status     the fleet as a table (or --json)
    zmqcross reshard    switch the fleet to a new shard plan
    zmqcross restart    give clusters new processes one at a time (a code deploy)
    zmqcross dashboard  a web page showing the fleet live
    zmqcross keygen     CURVE key pairs
    zmqcross demo       a whole fleet on this machine, without Discord

bridge, machine, gateway, status, reshard, restart and dashboard read a TOML file, ``ZMQCROSS_*`` variables
and flags (:mod:`zmqcross.config`); :func:`settings_for` gives a script (``bots/``) the
settings a command would run with, from the same places. Exit status: 0 after a clean run
or a SIGTERM/SIGINT, 1 when something fails at run time (refused token, unreachable
bridge), 2 for bad configuration or usage. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from ..config import (
    CONFIG_ENV,
    PRECEDENCE,
    Setting,
    boolean,
    check_file,
    load_file,
    positive_int,
    positive_number,
    resolve,
    unknown_variables,
)
from ..errors import ConfigurationError, ZmqcrossError
from ..eventloop import run
from .options import COMMANDS, KNOWN_VARIABLES

__all__ = ["Invocation", "build_parser", "configure", "main", "settings_for", "settle"]

log = logging.getLogger("zmqcross.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EXIT_CODES = (
    "Exit status: 0 after a clean run or a SIGTERM/SIGINT; 1 when something fails at run time "
    "(refused token, unreachable bridge); 2 for bad configuration or usage."
)


# Flag-only arguments use the same parsers as settings, for the same error messages.
_SECONDS = Setting("seconds", None, positive_number, "")
_COUNT = Setting("count", None, positive_int, "")


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description on its own, so blank lines survive."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            textwrap.fill(p, width, initial_indent=indent, subsequent_indent=indent)
            for p in text.split("\n\n")
        )


def _flag_help(setting: Setting) -> str:
    text = setting.help
    if setting.required:
        text += " (required)"
    elif setting.default is not None and "[default:" not in text:
        text += f" [default: {setting.default}]"
    if setting.env:
        text += f" [${setting.env}]"
    return text


def _parse_flag(setting: Setting) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            return setting.parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = setting.name
    return parse


def _add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML file with settings (top-level keys and a [{command}] table) [${CONFIG_ENV}]",
    )
    for setting in COMMANDS[command]:
        if setting.parse is boolean:
            parser.add_argument(
                setting.option,
                dest=setting.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=_flag_help(setting),
            )
        else:
            parser.add_argument(
                setting.option,
                dest=setting.name,
                type=_parse_flag(setting),
                default=argparse.SUPPRESS,
                metavar=setting.metavar or setting.name.split("_")[-1].upper(),
                help=_flag_help(setting),
            )


def _command(
    commands: Any, name: str, summary: str, description: str, *, settings: bool = True
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description + ("\n\n" + PRECEDENCE if settings else "") + "\n\n" + EXIT_CODES,
        formatter_class=_Formatter,
    )
    if settings:
        _add_settings(parser, name)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``configure`` uses it, and tests parse with it."""
    parser = argparse.ArgumentParser(
        prog="zmqcross",
        description=(
            "Run a discord.py bot's shards across many machines over ZeroMQ.\n\n"
            "bridge, machine, gateway, status, reshard, restart and dashboard read a TOML file (--config), ZMQCROSS_* "
            "environment variables and flags; flags override the environment, which overrides the "
            "file. `zmqcross COMMAND --help` lists each setting with its variable.\n\n" + EXIT_CODES
        ),
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _command(
        commands,
        "bridge",
        "run the bridge: plan the shards and let machines in",
        "Run the bridge (zmqcross.Bridge) until SIGTERM or SIGINT, then close it. Prints "
        "'bridge: listening on ...' once bound, and a line per client that connects or leaves.",
    )
    _command(
        commands,
        "machine",
        "run a machine: its agent and the clusters of --bot",
        "Run a whole machine (zmqcross.Machine): connect to the bridge, ask for this machine's "
        "share of the plan, run it as cluster processes of the bot file, follow plan changes. "
        "Prints 'k/n clusters ready' as clusters come up. On SIGTERM or SIGINT it drains: the "
        "bridge hands its clusters to a standby at once, requests in flight finish, then the "
        "clusters close their Discord connections.",
    )
    _command(
        commands,
        "gateway",
        "serve an offline Discord (REST + Gateway v10) with synthetic guilds",
        "Serve an offline Discord with synthetic guilds (python -m zmqcross.gateway). Prints "
        "one line ZMQCROSS_DISCORD_API=<url> once listening; give that URL to machines (and to "
        'a bridge with --total-shards "auto"). Runs until SIGTERM or SIGINT.',
    )
    status = _command(
        commands,
        "status",
        "print the fleet: machines, clusters, what is unassigned",
        "Connect as a dashboard and print the fleet: each client (agent, address, plan, stale, "
        "standby), each cluster (shards, pid, state, guilds, uptime, restarts, heartbeat age) and "
        "the clusters nobody runs.",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--shards", action="store_true", help="add a line per shard: state, latency, idle, disconnects"
    )
    status.add_argument(
        "--watch", type=_parse_flag(_SECONDS), metavar="SECONDS", help="print it again every SECONDS"
    )
    status.add_argument(
        "--timeout", type=_parse_flag(_SECONDS), default=10.0, help="seconds to wait for the answer"
    )
    reshard = _command(
        commands,
        "reshard",
        "switch the running fleet to a new shard plan",
        "Ask the bridge to switch the fleet to a new plan (needs the 'admin' permission). "
        "Machines with rolling restarts replace their clusters one at a time; the others keep "
        "the old plan and show as stale. The plan's numbers are taken from flags only: "
        "ZMQCROSS_TOTAL_SHARDS and the like set the bridge's starting plan, not a change.",
    )
    reshard.add_argument(
        "--total-shards", type=_parse_flag(_COUNT), required=True, metavar="N", help="shards of the new plan"
    )
    reshard.add_argument(
        "--shards-per-cluster", type=_parse_flag(_COUNT), metavar="K", help="[default: unchanged]"
    )
    reshard.add_argument(
        "--total-machines", type=_parse_flag(_COUNT), metavar="M", help="[default: unchanged]"
    )
    reshard.add_argument("--json", action="store_true", help="print the bridge's answer as JSON")
    reshard.add_argument(
        "--timeout", type=_parse_flag(_SECONDS), default=10.0, help="seconds to wait for the answer"
    )

    restart = _command(
        commands,
        "restart",
        "give clusters new processes one at a time (a code deploy)",
        "Ask the bridge to restart clusters (needs the 'admin' permission): each gets a new process "
        "that reads the bot file afresh, IDENTIFYs in its turn and takes over from the old one, each "
        "event handled once. One cluster at a time fleet-wide (--concurrency for more). Prints each "
        "step; exits 0 when every cluster is done, 1 if one fails (its old process serves on and "
        "nothing further restarts).",
    )
    which = restart.add_mutually_exclusive_group(required=True)
    which.add_argument("--clusters", metavar="IDS", help="cluster ids, comma-separated: 0,3")
    which.add_argument(
        "--machine", action="append", metavar="ID", help="every cluster of machine ID (repeatable)"
    )
    which.add_argument("--all", action="store_true", help="every cluster of the fleet")
    which.add_argument(
        "--cancel", action="store_true", help="stop the restart under way after its current cluster"
    )
    restart.add_argument(
        "--concurrency", type=_parse_flag(_COUNT), default=1, metavar="N", help="clusters restarting at once"
    )

    _command(
        commands,
        "dashboard",
        "serve a web page showing the fleet live",
        "Connect as a dashboard and serve a web page of the fleet, refreshed every second: machines, "
        "clusters, shards, ready state, guilds, restarts, heartbeat age and eval latency, with a guild "
        "lookup; and its JSON at /api/fleet and /api/guild/ID. Prints 'dashboard: serving http://...' "
        "once listening. Runs until SIGTERM or SIGINT.",
    )

    keygen = _command(
        commands,
        "keygen",
        "write CURVE key pairs (NAME.key public, NAME.key_secret private, mode 0600)",
        "Write DIR/NAME.key (public: give it to the bridge's allow-list, or to clients if this is "
        "the bridge's key) and DIR/NAME.key_secret (private, created mode 0600) for each NAME. "
        "With --fleet, write the layout --keys expects: DIR/bridge.key* for the bridge and "
        "DIR/allowed/NAME.key* for each client NAME.",
        settings=False,
    )
    keygen.add_argument("directory", metavar="DIR", help="folder for the key files (created if missing)")
    keygen.add_argument("names", nargs="+", metavar="NAME", help="key name, e.g. bridge or machine-1")
    keygen.add_argument(
        "--fleet", action="store_true", help="DIR is a keys folder: add bridge, put each NAME in allowed/"
    )
    existing = keygen.add_mutually_exclusive_group()
    existing.add_argument("--force", action="store_true", help="overwrite existing key files")
    existing.add_argument(
        "--keep",
        action="store_true",
        help="keep pairs that already exist (a setup step run again is harmless)",
    )

    demo = _command(
        commands,
        "demo",
        "run a whole fleet on this machine, without Discord",
        "Start an offline gateway, a bridge, two machines of two clusters each and a dashboard, "
        "all as separate processes with CURVE on; print what the dashboard sees, stop "
        "everything, exit with the dashboard's status.",
        settings=False,
    )
    demo.add_argument("--bot", metavar="FILE", help="bot file of the clusters [default: zmqcross's demo bot]")
    return parser


@dataclass(frozen=True, slots=True)
class Invocation:
    """A parsed command line: the command, its arguments and its merged settings.

    ``warnings`` are for the log once it is set up: ``ZMQCROSS_*`` variables no setting reads.
    """

    command: str
    args: argparse.Namespace
    settings: dict[str, Any]
    warnings: tuple[str, ...] = ()


def configure(argv: Sequence[str] | None, env: Mapping[str, str]) -> Invocation:
    """Parse ``argv`` and merge the settings with ``env`` and the config file.

    Usage errors exit through argparse (status 2); bad settings raise :class:`ConfigurationError`.
    """
    return settle(build_parser().parse_args(argv), env)


def settle(args: argparse.Namespace, env: Mapping[str, str]) -> Invocation:
    """Merge parsed arguments with ``env`` and the config file they name (or ``$ZMQCROSS_CONFIG``)."""
    settings = COMMANDS.get(args.command)
    if settings is None:
        return Invocation(args.command, args, {})
    path = getattr(args, "config", None) or env.get(CONFIG_ENV) or None
    file: dict[str, Any] = {}
    if path:
        file = load_file(path)
        check_file(file, COMMANDS, path)
    flags = {s.name: getattr(args, s.name) for s in settings if hasattr(args, s.name)}
    values = resolve(args.command, settings, flags=flags, env=env, file=file, path=path or "")
    return Invocation(args.command, args, values, tuple(unknown_variables(env, KNOWN_VARIABLES)))


def settings_for(
    command: str,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    prog: str | None = None,
) -> dict[str, Any]:
    """The settings ``zmqcross COMMAND`` would run with, for a script that builds its own objects.

    ``argv`` are the command's flags (default ``sys.argv[1:]``), ``env`` the environment
    (default ``os.environ``, which may name the TOML file in ``$ZMQCROSS_CONFIG``; so may
    ``--config``). Same defaults, same precedence, same checks as the command: a bad or
    missing setting raises :class:`ConfigurationError`; a bad flag exits with status 2
    and ``--help`` lists every setting, both through argparse, as the command does.
    """
    if command not in COMMANDS:
        raise ValueError(f"{command!r} reads no settings; commands that do: {sorted(COMMANDS)}")
    parser = argparse.ArgumentParser(
        prog=prog or f"zmqcross {command}",
        description=PRECEDENCE + "\n\n" + EXIT_CODES,
        formatter_class=_Formatter,
    )
    _add_settings(parser, command)
    args = parser.parse_args(argv)
    args.command = command
    invocation = settle(args, os.environ if env is None else env)
    for warning in invocation.warnings:  # before the script sets up logging: Python's last resort prints it
        log.warning("%s", warning)
    return invocation.settings


def _run_async(work: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    async def runner() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return await work(stop)

    return run(runner())


def _dispatch(inv: Invocation) -> int:
    from . import admin, serve

    args, settings = inv.args, inv.settings
    if inv.command == "keygen":
        return admin.run_keygen(args)
    if inv.command == "demo":
        from ..demo import main as demo_main

        return demo_main(bot=args.bot)
    logging.basicConfig(
        level=settings.get("log_level", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    for warning in inv.warnings:
        log.warning("%s", warning)
    if inv.command == "gateway":
        return serve.run_gateway(settings)
    if inv.command == "bridge":
        return _run_async(lambda stop: serve.run_bridge(settings, stop))
    if inv.command == "machine":
        return _run_async(lambda stop: serve.run_machine(settings, stop))
    if inv.command == "status":
        return _run_async(lambda stop: admin.run_status(settings, args, stop))
    if inv.command == "reshard":
        return _run_async(lambda stop: admin.run_reshard(settings, args, stop))
    if inv.command == "restart":
        return _run_async(lambda stop: admin.run_restart(settings, args, stop))
    if inv.command == "dashboard":
        from ..dashboard.serve import run_dashboard  # its web app only for this command

        return _run_async(lambda stop: run_dashboard(settings, stop))
    raise AssertionError(f"no handler for {inv.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    command = "zmqcross"
    try:
        args = build_parser().parse_args(argv)
        command = f"zmqcross {args.command}"
        return _dispatch(settle(args, os.environ))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except ConfigurationError as exc:
        _fail(command, exc.message, exc)
        return EXIT_USAGE
    except ZmqcrossError as exc:
        _fail(command, exc.message, exc)
        return EXIT_FAILED
    except BrokenPipeError:  # stdout's reader is gone (`zmqcross status | head`): nothing to tell it
        from .serve import stdout_gone

        stdout_gone()
        return EXIT_FAILED
    except (OSError, zmq.ZMQError) as exc:
        _fail(command, str(exc), exc)
        return EXIT_FAILED
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 130


def _fail(command: str, message: str, exc: BaseException) -> None:
    # One line for people; the traceback only with --log-level DEBUG.
    log.debug("%s failed", command, exc_info=exc)
    print(f"{command}: {message}", file=sys.stderr)
