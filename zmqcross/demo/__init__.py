"""``zmqcross demo`` (and ``make demo``): a whole fleet on this machine, without Discord.

Starts the offline gateway, a bridge, two machines running two clusters of two shards
each, and a dashboard, all as separate ``zmqcross`` processes with CURVE on; prints
what the dashboard sees, shuts everything down and returns the dashboard's exit status.
Every process's log is kept in a temporary folder and shown if something fails.

It needs no file outside the installed package: the bot is :mod:`zmqcross.demo.bot`
unless ``bot`` names another file, the dashboard is :mod:`zmqcross.demo.dashboard`.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..security import generate_keypair

__all__ = ["main"]

TIMEOUT = 50.0
"""Seconds the dashboard has to see the whole fleet and finish."""

BOT = Path(__file__).with_name("bot.py")


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """The demo's processes: started with their output echoed, stopped with SIGTERM."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[str, subprocess.Popen[str]]] = []
        self.api: str | None = None

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        log = open(self.work / f"{name}.log", "w")  # noqa: SIM115 - the child holds it until it exits
        proc = subprocess.Popen(
            [sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
        log.close()
        self.procs.append((name, proc))
        threading.Thread(target=self._echo, args=(proc,), daemon=True).start()
        return proc

    def _echo(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ZMQCROSS_DISCORD_API="):
                self.api = line.strip().split("=", 1)[1]
            print(line, end="", flush=True)

    def wait_api(self) -> str:
        end = time.monotonic() + 15
        while self.api is None:
            if time.monotonic() > end:
                raise RuntimeError("the offline gateway did not start")
            time.sleep(0.05)
        return self.api

    def stop(self) -> None:
        # Newest first, each one gone before the next is asked: machines drain while the
        # bridge is still there to hear them leave, and the bridge goes before the gateway.
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                print(f"[demo] {name} did not stop; killing it", flush=True)
                proc.kill()
                proc.wait()

    def show_logs(self) -> None:
        for name, _ in self.procs:
            text = (self.work / f"{name}.log").read_text(errors="replace").splitlines()
            print(f"--- last lines of {name}.log ---", *text[-15:], sep="\n")


def _clean_environment() -> dict[str, str]:
    # The demo is its own fleet: settings meant for a real one must not leak into it.
    keep = {"ZMQCROSS_LOG_LEVEL"}
    return {
        k: v
        for k, v in os.environ.items()
        if k in keep or not (k.startswith("ZMQCROSS_") or k == "DISCORD_TOKEN")
    }


GUILDS = 2000
"""Guilds of the offline gateway; the dashboard looks up guild #1234."""

IDENTIFY_WINDOW = "1"
"""Seconds between two IDENTIFYs of one bucket, at the gateway and the bridge (Discord: 5)."""

PERMISSIONS = "machine-*=host,eval,request,cache; dashboard=eval,request,cache"
"""The bridge's policy: CURVE keys it does not name may only request and use the cache, so
the machines' keys are named to host clusters, the dashboard's to time evals."""


def main(*, bot: str | os.PathLike[str] | None = None) -> int:
    """Run the demo fleet; returns the dashboard's exit status (0 when it saw every cluster)."""
    started = time.monotonic()
    bot_file = Path(bot) if bot is not None else BOT
    with tempfile.TemporaryDirectory(prefix="zmqcross-demo-") as tmp:
        work = Path(tmp)
        keys = work / "keys"
        generate_keypair(keys, "bridge")
        for name in ("machine-1", "machine-2", "dashboard"):
            generate_keypair(keys / "allowed", name)
        fleet = Fleet(work)
        status = 1
        try:
            base = _clean_environment()
            # Discord's IDENTIFY limits, enforced: 2 buckets (max_concurrency), one IDENTIFY per
            # bucket per IDENTIFY_WINDOW s (Discord: 5). The bridge asks /gateway/bot for them.
            gateway = [
                "--guilds",
                str(GUILDS),
                "--max-concurrency",
                "2",
                "--identify-window",
                IDENTIFY_WINDOW,
            ]
            fleet.start("gateway", ["-m", "zmqcross", "gateway", *gateway], base)
            port = free_port()
            env = {
                **base,
                "ZMQCROSS_DISCORD_API": fleet.wait_api(),
                "ZMQCROSS_AUTH_TOKEN": secrets.token_hex(16),
                "ZMQCROSS_BRIDGE_PORT": str(port),
                "ZMQCROSS_PUB_PORT": str(free_port()),
                "ZMQCROSS_KEYS": str(keys),
                "DISCORD_TOKEN": "offline",  # any token will do for the offline gateway
                "ZMQCROSS_IDENTIFY_WINDOW": IDENTIFY_WINDOW,
            }
            fleet.start(
                "bridge",
                [
                    "-m",
                    "zmqcross",
                    "bridge",
                    "--total-shards",
                    "8",
                    "--shards-per-cluster",
                    "2",
                    "--total-machines",
                    "2",
                    "--permissions",
                    PERMISSIONS,
                ],
                env,
            )
            for machine in ("machine-1", "machine-2"):
                fleet.start(
                    machine,
                    [
                        "-m",
                        "zmqcross",
                        "machine",
                        "--machine-id",
                        machine,
                        "--bot",
                        str(bot_file),
                        "--spawn-delay",
                        "0",
                    ],
                    env,
                )
            dashboard = fleet.start("dashboard", ["-m", "zmqcross.demo.dashboard"], env)
            status = dashboard.wait(TIMEOUT)
        except (subprocess.TimeoutExpired, RuntimeError) as exc:
            print(f"[demo] failed: {exc}", flush=True)
        finally:
            fleet.stop()
            if status != 0:
                fleet.show_logs()
        print(
            f"[demo] {'done' if status == 0 else 'FAILED'} in {time.monotonic() - started:.1f} s", flush=True
        )
        return status
