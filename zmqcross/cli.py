"""The ``zmqcross`` command line.

Subcommands so far: ``keygen`` (write a CURVE key pair). The fleet commands (bridge,
machine, gateway, status, reshard, demo) arrive with the issues that build them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import ConfigurationError
from .security import generate_keypair

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqcross",
        description="Run a discord.py bot's shards across many machines over ZeroMQ.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    keygen = commands.add_parser(
        "keygen",
        help="write a CURVE key pair (NAME.key public, NAME.key_secret private, mode 0600)",
        description=(
            "Write DIR/NAME.key (public: give it to the bridge's allow-list, or to clients if this is "
            "the bridge's key) and DIR/NAME.key_secret (private, created mode 0600)."
        ),
    )
    keygen.add_argument("directory", metavar="DIR", help="folder for the key files (created if missing)")
    keygen.add_argument("name", metavar="NAME", help="key name, e.g. bridge or machine-1")
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            public, secret = generate_keypair(args.directory, args.name, overwrite=args.force)
            print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    except ConfigurationError as exc:
        print(f"zmqcross {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0
