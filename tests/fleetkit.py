"""Processes for fleet tests: the shipped bots/bridge.py and bots/cluster.py, run for real."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from conftest import IDENTIFY_WINDOW

from zmqcross import Client, ZmqcrossError

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fleet-token"


class Proc:
    """A child process whose stdout lines are collected as they arrive."""

    def __init__(self, name: str, script: Path | list[str], env: dict[str, str]) -> None:
        """Run ``script`` with this Python (or ``script`` as a whole command line, when a list)."""
        self.name = name
        self.lines: list[str] = []
        # Each process's stderr goes to a file: its tail is printed when a test fails
        # (Processes.tails). FLEET_LOGS=DIR keeps them as DIR/NAME.log (FLEET_LOG_LEVEL=INFO for more).
        logs = os.environ.get("FLEET_LOGS")
        if logs:
            self.log_path = os.path.join(logs, f"{name}.log")
            self.keep_log = True
        else:
            handle, self.log_path = tempfile.mkstemp(prefix=f"fleet-{name}-", suffix=".log")
            os.close(handle)
            self.keep_log = False
        stderr = open(self.log_path, "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            script if isinstance(script, list) else [sys.executable, str(script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines this process wrote to stderr."""
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def forget_log(self) -> None:
        """Remove its stderr file unless FLEET_LOGS asked to keep it."""
        if not self.keep_log:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    async def wait_line(self, needle: str, timeout: float = 30.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines:
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} never printed {needle!r}; it printed {self.lines}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


class Processes:
    """Starts bridges and machines sharing one environment; kills whatever is left at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[Proc] = []

    def bridge(self, **extra: str) -> Proc:
        return self._start("bridge", ROOT / "bots" / "bridge.py", extra)

    def machine(self, machine_id: str, **extra: str) -> Proc:
        return self._start(
            machine_id, ROOT / "bots" / "cluster.py", {"ZMQCROSS_MACHINE_ID": machine_id, **extra}
        )

    def _start(self, name: str, script: Path, extra: dict[str, str]) -> Proc:
        proc = Proc(name, script, {**self.env, **extra})
        self.started.append(proc)
        return proc

    async def stop_all(self, *, failed: bool = False) -> None:
        """Stop every process; after a failed test, print the tail of each one's stderr."""
        for proc in self.started:
            proc.signal(signal.SIGCONT)
            proc.signal(signal.SIGTERM)
        for proc in self.started:
            try:
                await proc.wait_exit(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in self.started:
            if failed:
                print(f"----- {proc.name} (pid {proc.proc.pid}), stderr tail -----\n{proc.tail()}")
            proc.forget_log()


def fleet_env(api_base: str, port: int, **extra: str) -> dict[str, str]:
    """Settings for bots/*.py: 8 shards in 4 clusters for 2 machines, offline Discord, fast spawns."""
    env = {
        **os.environ,
        "ZMQCROSS_DISCORD_API": api_base,
        "ZMQCROSS_AUTH_TOKEN": TOKEN,
        "ZMQCROSS_BRIDGE_PORT": str(port),
        "ZMQCROSS_TOTAL_SHARDS": "8",
        "ZMQCROSS_SHARDS_PER_CLUSTER": "2",
        "ZMQCROSS_TOTAL_MACHINES": "2",
        "ZMQCROSS_SPAWN_DELAY": "0",
        "ZMQCROSS_IDENTIFY_WINDOW": str(IDENTIFY_WINDOW),  # the tests' gateways use this window
        "ZMQCROSS_LEASE": "5",  # failovers wait for a lost machine's lease (default 10 s)
        "ZMQCROSS_LOG_LEVEL": os.environ.get("FLEET_LOG_LEVEL", "WARNING"),
        "ZMQCROSS_BOT_FILE": str(ROOT / "tests" / "fleet_bot.py"),
    }
    env.pop("ZMQCROSS_KEYS", None)
    env.update(extra)
    return env


async def wait_clusters(client: Client, expected: list[int], timeout: float = 40.0) -> None:
    """Wait until an eval over every cluster answers exactly ``expected`` (their ids)."""
    end = time.monotonic() + timeout
    results: list[Any] = []
    while time.monotonic() < end:
        try:
            results = await client.broadcast_eval("bot.cluster.id", return_exceptions=True, timeout=3)
        except ZmqcrossError as exc:
            results = [exc]
        if results == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"clusters {expected} not all answering after {timeout} s: {results}")
