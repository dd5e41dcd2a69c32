"""The short-lived commands: ``zmqcross status``, ``reshard``, ``restart`` and ``keygen``."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from ..client import Client
from ..errors import ConfigurationError, ZmqcrossError
from ..security import generate_keypair
from .options import client_curve
from .serve import Stopped, unless_stopped
from .table import render_plan, render_shards, render_status

__all__ = ["admin_client", "run_keygen", "run_reshard", "run_restart", "run_status"]

Settings = dict[str, Any]


def admin_client(settings: Settings, *, role: str = "status") -> Client:
    """A dashboard client from ``status``/``reshard``/``dashboard`` settings (not connected yet).

    Its id is ``dashboard_id``, or ``<hostname>:<role>`` when that is not set.
    """
    return Client(
        agent="dashboard",
        machine_id=settings["dashboard_id"] or f"{socket.gethostname()}:{role}",
        host=settings["bridge_host"],
        port=settings["bridge_port"],
        pub_port=settings["pub_port"],
        auth_token=settings["auth_token"],
        curve=client_curve(settings["keys"], settings["dashboard_key"]),
        connect_timeout=settings["connect_timeout"],
    )


async def run_status(settings: Settings, args: argparse.Namespace, stop: asyncio.Event) -> int:
    """``zmqcross status``: print the fleet once, or every ``--watch`` seconds until stopped."""
    client = admin_client(settings)
    try:
        await unless_stopped(stop, client.connect())
        while True:
            try:
                status = await client.fleet_status(timeout=args.timeout)
            except ZmqcrossError as exc:
                # Watching outlives a bridge restart (the client re-registers by itself).
                if not args.watch or isinstance(exc, ConfigurationError):
                    raise
                print(f"status: no answer: {exc.message}", flush=True)
            else:
                text = json.dumps(status.to_json(), indent=2) if args.json else render_status(status)
                if args.shards and not args.json:
                    text += "\n\n" + render_shards(status)
                print(text, flush=True)
            if not args.watch:
                return 0
            print(flush=True)
            await unless_stopped(stop, asyncio.sleep(args.watch))
    except Stopped:
        return 0
    finally:
        await client.close()


async def run_reshard(settings: Settings, args: argparse.Namespace, stop: asyncio.Event) -> int:
    """``zmqcross reshard``: ask the bridge for a new plan and print it."""
    client = admin_client(settings)
    try:
        await unless_stopped(stop, client.connect())
        asked = client.reshard(
            total_shards=args.total_shards,
            shards_per_cluster=args.shards_per_cluster,
            total_machines=args.total_machines,
            timeout=args.timeout,
        )
        answer = await unless_stopped(stop, asked)
    except Stopped:
        return 0
    finally:
        await client.close()
    print(json.dumps(answer, indent=2) if args.json else render_plan(answer), flush=True)
    return 0


async def run_restart(settings: Settings, args: argparse.Namespace, stop: asyncio.Event) -> int:
    """``zmqcross restart``: restart clusters across the fleet, printing each step; 0 when all are done."""
    client = admin_client(settings, role="restart")
    try:
        await unless_stopped(stop, client.connect())
        if args.cancel:
            run = await unless_stopped(stop, client.cancel_restart())
            print(run["progress"] if run is not None else "no restart has run", flush=True)
            return 0
        clusters = [int(c) for c in args.clusters.split(",") if c.strip()] if args.clusters else None
        asked = client.restart(
            clusters=clusters,
            machines=args.machine or None,
            all=args.all,
            concurrency=args.concurrency,
            progress=lambda record: print(record["progress"], flush=True),
        )
        await unless_stopped(stop, asked)
        return 0
    except Stopped:
        return 0
    finally:
        await client.close()


def run_keygen(args: argparse.Namespace) -> int:
    """``zmqcross keygen``: write key pairs; with ``--fleet``, the layout ``--keys`` expects."""
    root = Path(args.directory)
    wanted = [(root, "bridge")] if args.fleet else []
    wanted += [(root / "allowed" if args.fleet else root, name) for name in args.names]
    for folder, name in wanted:
        public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
        if args.keep and public.exists() and secret.exists():
            print(f"kept existing pair {secret}")
            continue
        public, secret = generate_keypair(folder, name, overwrite=args.force)
        print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0
