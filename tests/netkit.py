"""Real processes and real hosts for the command-line and multi-host tests.

- :class:`Service`: a process (a ``zmqcross`` command, usually) whose output lines are
  collected, optionally run inside a network namespace with ``ip netns exec``.
- :class:`Network`: hosts in network namespaces joined by veth pairs to one Linux bridge,
  which lives in a "switch" namespace of its own: nothing is added to the root namespace,
  so the 10.231.0.0/24 addresses exist only between these hosts.
- ``python tests/netkit.py dashboard``: a dashboard driven over stdin/stdout with one JSON
  object per line, for a test that cannot itself enter a namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.231.0"


SHORT_WINDOW = "0.05"
"""The IDENTIFY window of the tests' gateways and bridges (conftest.IDENTIFY_WINDOW)."""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ZMQCROSS_* setting, plus ``extra``.

    Offline gateways and bridges started with it pace IDENTIFYs by the tests' short window
    (the gateway enforces Discord's limits: one bucket, one IDENTIFY per window).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQCROSS_") and k != "DISCORD_TOKEN"}
    env.update(ZMQCROSS_IDENTIFY_WINDOW=SHORT_WINDOW, ZMQCROSS_GATEWAY_IDENTIFY_WINDOW=SHORT_WINDOW)
    env.update(extra)
    return env


class Service:
    """A child process whose stdout and stderr lines are collected as they arrive.

    It runs in a session of its own, so :meth:`stop` can kill what it left behind
    (cluster processes) by its process group.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        netns: str | None = None,
        stdin: bool = False,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.lines: list[str] = []
        self.errors: list[str] = []
        command = [sys.executable, *argv]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._cursor = 0
        for stream, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first stdout line matching the regular expression ``pattern``."""
        end = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(
                    f"{self.name} never printed /{pattern}/ (exit {self.proc.poll()}); stdout: "
                    f"{self.lines[-30:]}; stderr: {self.errors[-30:]}"
                )
            time.sleep(0.05)

    def next_line(self, timeout: float) -> str:
        """The next stdout line not returned by an earlier call."""
        end = time.monotonic() + timeout
        while self._cursor >= len(self.lines):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"{self.name} printed nothing more; stderr: {self.errors[-30:]}")
            time.sleep(0.01)
        self._cursor += 1
        return self.lines[self._cursor - 1]

    def send(self, line: str) -> None:
        """Write one line to the process's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process itself."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        """Its exit status, waiting up to ``timeout`` seconds."""
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL its whole process group; its exit status if it stopped in time."""
        self.signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        return code


# --------------------------------------------------------------------------- network namespaces


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its stdout, or RuntimeError with its stderr."""
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def why_no_netns() -> str | None:
    """Why this process cannot build namespaces (not root, no ``ip``), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


def sweep_stale_namespaces() -> None:
    """Delete namespaces a killed earlier run left behind (named zx-<pid>-..., that pid gone)."""
    for line in ip("netns", "list").splitlines():
        found = re.match(r"(zx-(\d+)-\S+)", line)
        if found and int(found.group(2)) != os.getpid() and not Path(f"/proc/{found.group(2)}").exists():
            subprocess.run(["ip", "netns", "del", found.group(1)], check=False, capture_output=True)


class Network:
    """Hosts on one Ethernet segment: a namespace per host, veth pairs, a Linux bridge.

    Names carry this process's id (``zx-<pid>-<host>``), so parallel runs never meet and
    :func:`sweep_stale_namespaces` can tell leftovers apart. :meth:`close` deletes them all.
    """

    def __init__(self) -> None:
        self.prefix = f"zx-{os.getpid()}"
        self.switch = f"{self.prefix}-switch"
        self.hosts: dict[str, str] = {}  # name -> IP
        self._namespaces: list[str] = []
        try:
            self._add_namespace(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
        except RuntimeError:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def netns(self, host: str) -> str:
        """The namespace of ``host``."""
        return f"{self.prefix}-{host}"

    def add_host(self, host: str, last_octet: int) -> str:
        """A host with one interface, eth0, plugged into the switch; returns its IP address."""
        address = f"{SUBNET}.{last_octet}"
        ns = self.netns(host)
        self._add_namespace(ns)
        port = self._port(host)
        # Both ends are created inside namespaces: the root namespace never sees them.
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        self.hosts[host] = address
        return address

    def _port(self, host: str) -> str:
        return f"p-{host}"[:15]  # interface names are at most 15 bytes

    def cut(self, host: str) -> None:
        """Unplug ``host``: its switch port goes down and its packets are lost, as with a pulled cable."""
        ip("-n", self.switch, "link", "set", self._port(host), "down")

    def restore(self, host: str) -> None:
        """Plug ``host`` back in."""
        ip("-n", self.switch, "link", "set", self._port(host), "up")

    def close(self) -> None:
        """Delete every namespace (their interfaces go with them)."""
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self._namespaces.clear()


# --------------------------------------------------------------------------- the dashboard driver


def _encode(value: Any) -> Any:
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": getattr(value, "message", str(value))}
    return value


async def _drive() -> None:
    # Imported here: the helpers above must work without zmqcross installed.
    from zmqcross.cli.admin import admin_client
    from zmqcross.cli.options import STATUS
    from zmqcross.config import resolve

    settings = resolve("status", STATUS, flags={}, env=os.environ, file={})
    loop = asyncio.get_running_loop()
    async with admin_client(settings) as client:
        print(json.dumps({"ready": client.id}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            call = json.loads(line)
            started = time.monotonic()
            try:
                if call["call"] == "broadcast_eval":
                    result: Any = [
                        _encode(r)
                        for r in await client.broadcast_eval(**call["args"], return_exceptions=True)
                    ]
                elif call["call"] == "request_to_guild":
                    result = await client.request_to_guild(call["args"], timeout=call.get("timeout", 10))
                elif call["call"] == "fleet_status":
                    result = (await client.fleet_status()).to_json()
                else:
                    raise ValueError(f"unknown call {call['call']!r}")
                answer = {"ok": result}
            except Exception as exc:
                answer = {"failed": _encode(exc)}
            answer["elapsed"] = time.monotonic() - started
            print(json.dumps(answer), flush=True)


class Dashboard:
    """``python tests/netkit.py dashboard`` on some host, called like a client."""

    def __init__(self, *, env: dict[str, str], netns: str | None = None) -> None:
        self.service = Service(
            "dashboard", [str(Path(__file__)), "dashboard"], env=env, netns=netns, stdin=True
        )
        ready = json.loads(self.service.next_line(timeout=30))
        assert "ready" in ready, ready

    def call(self, call: str, args: Any = None, timeout: float = 30.0) -> dict[str, Any]:
        """``{"ok": result, "elapsed": s}`` or ``{"failed": {"error", "message"}, "elapsed": s}``."""
        self.service.send(json.dumps({"call": call, "args": args or {}}))
        answer: dict[str, Any] = json.loads(self.service.next_line(timeout))
        return answer

    def stop(self) -> None:
        self.service.stop()


if __name__ == "__main__" and sys.argv[1:] == ["dashboard"]:
    asyncio.run(_drive())
