"""How the example scripts get their settings: exactly as the `zmqcross` commands do.

Each script resolves the settings of the command it stands in for (bridge.py those of
`zmqcross bridge`, cluster.py of `zmqcross machine`, dashboard.py of `zmqcross dashboard`)
with zmqcross's own code: a TOML file (--config or $ZMQCROSS_CONFIG), then ZMQCROSS_*
variables, then flags; the same defaults and the same errors. `python bots/bridge.py
--help` lists every setting with its variable. There is no default auth token: set
ZMQCROSS_AUTH_TOKEN (or auth_token in the file).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from zmqcross import ConfigurationError, ZmqcrossError, run
from zmqcross.cli import settings_for

Settings = dict[str, Any]


def load(command: str, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The settings of `zmqcross COMMAND`, from the config file, the environment and ``argv`` (the flags)."""
    return settings_for(command, argv, env, prog=os.path.basename(sys.argv[0]))


def main(command: str, serve: Callable[[Settings], Coroutine[Any, Any, None]]) -> None:
    """Resolve ``command``'s settings and run ``serve`` with them; a bad setting is one line and exit 2."""
    script = os.path.basename(sys.argv[0])
    try:
        settings = load(command)
        logging.basicConfig(level=settings["log_level"], format="%(asctime)s %(name)s: %(message)s")
        run(serve(settings))  # uvloop when installed (zmqcross.run)
    except ConfigurationError as exc:
        print(f"{script}: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except (ZmqcrossError, OSError) as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        sys.exit(1)
