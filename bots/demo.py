"""`make demo`: a whole fleet on this machine, without Discord.

Starts the offline gateway (2,000 guilds), a bridge, two machines running two clusters of
two shards each, and a dashboard, all as separate processes with CURVE on; prints what
the dashboard sees, shuts everything down and exits with the dashboard's status.
Logs of every process are kept in a temporary folder and shown if something fails.
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

from zmqcross import generate_keypair

HERE = Path(__file__).resolve().parent
TIMEOUT = 50.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[str, subprocess.Popen[str]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        log = open(self.work / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=HERE.parent
        )
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
        while not getattr(self, "api", None):
            if time.monotonic() > end:
                raise RuntimeError("the offline gateway did not start")
            time.sleep(0.05)
        return self.api

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                print(f"[demo] {name} did not stop; killing it", flush=True)
                proc.kill()

    def show_logs(self) -> None:
        for name, _ in self.procs:
            text = (self.work / f"{name}.log").read_text(errors="replace").splitlines()
            print(f"--- last lines of {name}.log ---", *text[-15:], sep="\n")


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zmqcross-demo-") as tmp:
        work = Path(tmp)
        keys = work / "keys"
        generate_keypair(keys, "bridge")
        for name in ("machine-1", "machine-2", "dashboard"):
            generate_keypair(keys / "allowed", name)
        fleet = Fleet(work)
        status = 1
        try:
            fleet.start(
                "gateway",
                ["-m", "zmqcross.gateway", "--port", str(free_port()), "--guilds", "2000"],
                dict(os.environ),
            )
            env = {
                **os.environ,
                "ZMQCROSS_DISCORD_API": fleet.wait_api(),
                "ZMQCROSS_AUTH_TOKEN": secrets.token_hex(16),
                "ZMQCROSS_BRIDGE_PORT": str(free_port()),
                "ZMQCROSS_KEYS": str(keys),
                "ZMQCROSS_TOTAL_SHARDS": "8",
                "ZMQCROSS_SHARDS_PER_CLUSTER": "2",
                "ZMQCROSS_TOTAL_MACHINES": "2",
                "ZMQCROSS_SPAWN_DELAY": "0",
            }
            fleet.start("bridge", [str(HERE / "bridge.py")], env)
            for machine in ("machine-1", "machine-2"):
                fleet.start(machine, [str(HERE / "cluster.py")], {**env, "ZMQCROSS_MACHINE_ID": machine})
            dashboard = fleet.start(
                "dashboard", [str(HERE / "dashboard.py")], {**env, "ZMQCROSS_MACHINE_ID": "dashboard"}
            )
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


if __name__ == "__main__":
    sys.exit(main())
