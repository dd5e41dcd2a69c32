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

import aiohttp
from conftest import IDENTIFY_WINDOW

from zmqcross import Client, ZmqcrossError
from zmqcross.gateway import guild_id

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


async def fleet_bridge(make_bridge: Any, port: int, **options: Any) -> Any:
    """An in-process bridge for the fleet bots/cluster.py machines expect: 8 shards, 4 clusters, 2 machines."""
    settings: dict[str, Any] = {"total_shards": 8, "shards_per_cluster": 2, "total_machines": 2, **options}
    return await make_bridge(auth_token=TOKEN, port=port, pub_port=port + 1, **settings)


class Messages:
    """A user's message in each of ``guilds`` (indices) every ``every`` seconds, through the offline
    gateway's dispatch endpoint, while the block runs; ``sent`` holds the ids some session received.

    The fleet bot counts each message it handles in the bridge's "handled" cache path:
    :func:`assert_each_handled_once` then checks every one was handled exactly once.
    """

    def __init__(self, gateway_port: int, guilds: range, every: float = 0.05) -> None:
        self.url = f"http://127.0.0.1:{gateway_port}/_offline/dispatch"
        self.guilds, self.every = guilds, every
        self.sent: list[str] = []
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Messages:
        self._task = asyncio.create_task(self._talk())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done.set()
        if self._task is not None:
            await self._task

    async def _talk(self) -> None:
        async with aiohttp.ClientSession() as http:

            async def say(index: int) -> None:
                body = {"guild_id": str(guild_id(index)), "event": "MESSAGE_CREATE", "data": {"content": "hi"}}
                async with http.post(self.url, json=body) as response:
                    answer = await response.json()
                    if response.status == 200 and answer["delivered"]:
                        self.sent.append(answer["data"]["id"])

            while not self._done.is_set():
                await asyncio.gather(*(say(index) for index in self.guilds))
                await asyncio.sleep(self.every)


async def assert_each_handled_once(cache: Any, sent: list[str], *, at_least: int = 200) -> None:
    """Every message in ``sent`` was counted exactly once in ``cache``'s "handled" path."""
    handled = cache.cache["handled"]
    end = time.monotonic() + 10
    while len(handled.keys()) < len(sent) and time.monotonic() < end:
        await asyncio.sleep(0.1)
    counts = handled.get_many(sent)
    assert len(sent) > at_least, len(sent)
    twice = sorted(k for k, n in counts.items() if n != 1)
    missing = [k for k in sent if k not in counts]
    assert (twice, missing) == ([], []), f"{len(twice)} handled more than once, {len(missing)} never"
