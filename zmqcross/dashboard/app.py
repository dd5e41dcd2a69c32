"""The web dashboard: an aiohttp app over a connected ``dashboard`` :class:`~zmqcross.Client`.

One probe loop asks the bridge for the fleet's status and times a
``broadcast_eval("1")`` every ``interval`` seconds; the page and ``/api/fleet`` serve its
latest snapshot. So the fleet sees one status query and one eval per interval however
many browsers are open, and a slow bridge slows the numbers, never the page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self

from aiohttp import web

from .._httpsite import HttpSite
from ..client import Client
from ..errors import ConnectionLost, RequestTimeout, ZmqcrossError
from ..status import FleetStatus, summarize
from .guard import RequestGuard, exposure
from .latency import LatencyWindow
from .page import PAGE

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_WINDOW", "Dashboard", "LookupBuilder", "guild_lookup"]

log = logging.getLogger("zmqcross.dashboard")

DEFAULT_INTERVAL = 1.0
"""Seconds between two probes of the fleet (the page refreshes at the same pace)."""

DEFAULT_WINDOW = 60
"""Eval timings kept for the percentiles: the last minute at the default interval."""

PROBE_SCRIPT = "1"
"""The eval timed each probe: the cheapest script, so what is measured is the fabric."""

LookupBuilder = Callable[[int], Any]
"""Builds the request_to_guild payload for a guild id."""


def guild_lookup(guild_id: int) -> dict[str, Any]:
    """The default guild lookup payload: ``{"op": "guild", "guild_id": ...}``.

    The bot's ``on_request`` handler decides what the answer holds; bots/bot.py returns
    the guild's name, shard, roles and channels.
    """
    return {"op": "guild", "guild_id": guild_id}


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ZmqcrossError):
        return {"type": type(exc).__name__, "code": exc.code, "message": exc.message}
    return {"type": type(exc).__name__, "code": "error", "message": str(exc)}


class Dashboard:
    """Serves the fleet page on ``host:port`` for a connected dashboard ``client``.

    ::

        async with Client(agent="dashboard", auth_token="...") as client:
            async with Dashboard(client, port=8080) as dashboard:
                print(dashboard.url)
                await stop.wait()

    Routes: ``/`` (the page; ``/?guild=ID`` looks a guild up on load), ``/api/fleet`` (the
    latest snapshot: the bridge's :class:`FleetStatus` as JSON, its summary, eval latency
    p50/p99 over the last ``window`` probes and which clusters answered) and
    ``/api/guild/ID`` (``request_to_guild(lookup(ID))`` and its answer or error).
    ``port=0`` picks a free port, readable from :attr:`port` after :meth:`start`.

    Requests another web site could have made are answered 403 (see
    :mod:`zmqcross.dashboard.guard`): a ``Host`` that is not loopback, an IP address,
    ``host`` or one of ``allowed_hosts`` (DNS rebinding), or an ``Origin`` other than the
    dashboard's own. Bound beyond loopback, :meth:`start` logs a warning: the page has
    no login, and whoever reaches the port can read the fleet and ask guild requests.
    """

    def __init__(
        self,
        client: Client,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        interval: float = DEFAULT_INTERVAL,
        window: int = DEFAULT_WINDOW,
        timeout: float = 5.0,
        lookup: LookupBuilder = guild_lookup,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        self.client = client
        self._site = HttpSite(host, port)
        self._guard = RequestGuard.for_site(host, allowed_hosts)
        self._interval = float(interval)
        self._timeout = float(timeout)
        self._lookup = lookup
        self._latency = LatencyWindow(window)
        self._snapshot: dict[str, Any] | None = None
        self._first = asyncio.Event()
        self._probes = 0
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifetime

    @property
    def port(self) -> int:
        """The HTTP port (the real one after :meth:`start`, also when 0 was asked for)."""
        return self._site.port

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8080/``."""
        return self._site.url()

    def app(self) -> web.Application:
        """The aiohttp application (to mount it in another app, or test it)."""
        app = web.Application(middlewares=[self._refuse_other_sites])
        app.router.add_get("/", self._page)
        app.router.add_get("/api/fleet", self._fleet)
        app.router.add_get("/api/guild/{guild_id}", self._guild)
        return app

    async def start(self) -> None:
        """Start probing the fleet and serving the page."""
        if self._site.started:
            raise RuntimeError("this dashboard is already started")
        await self._site.start(self.app())
        exposed = exposure(self._site.host)
        if exposed is not None:
            log.warning(
                "the dashboard %s (port %d): it has no login, and anyone who can reach that port can "
                "read the fleet and send guild requests; bind 127.0.0.1 and put an authenticating "
                "proxy in front to serve it to others",
                exposed,
                self.port,
            )
        self._task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def close(self) -> None:
        """Stop probing and serving (the client stays connected: it is the caller's)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._site.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ probing

    def snapshot(self) -> dict[str, Any] | None:
        """What ``/api/fleet`` serves: the latest probe (``None`` before the first)."""
        return self._snapshot

    async def wait_snapshot(self) -> dict[str, Any]:
        """The latest probe, waiting for the first one."""
        await self._first.wait()
        assert self._snapshot is not None
        return self._snapshot

    async def probe(self) -> dict[str, Any]:
        """Ask for the fleet's status, time one eval, and make that the snapshot."""
        status: FleetStatus | None = None
        error: dict[str, Any] | None = None
        started = time.perf_counter()
        if not self.client.connected:
            # Asking now would only wait out the timeouts while the client re-registers.
            error = _error(ConnectionLost("not connected to the bridge (reconnecting)"))
            status_ms = 0.0
            latency = self._latency_report([], error)
        else:
            try:
                status = await self.client.fleet_status(timeout=self._timeout)
            except ZmqcrossError as exc:
                error = _error(exc)
            status_ms = (time.perf_counter() - started) * 1000.0
            latency = await self._time_eval()
        self._probes += 1
        self._snapshot = {
            "taken_at": time.time(),
            "probes": self._probes,
            "interval": self._interval,
            "dashboard": {"id": self.client.id, "connected": self.client.connected},
            "fleet": status.to_json() if status is not None else None,
            "summary": summarize(status).to_json() if status is not None else None,
            "error": error,
            "status_ms": status_ms,
            "latency": latency,
        }
        self._first.set()
        return self._snapshot

    async def _time_eval(self) -> dict[str, Any]:
        answered: list[dict[str, Any]] = []
        error: dict[str, Any] | None = None
        started = time.perf_counter()
        try:
            results = await self.client.broadcast_eval(
                PROBE_SCRIPT, return_exceptions=True, timeout=self._timeout
            )
        except ZmqcrossError as exc:  # refused, or no bridge: no cluster was asked
            error = _error(exc)
        else:
            elapsed = time.perf_counter() - started
            # One slot per cluster of the plan, in cluster id order.
            for cluster, result in enumerate(results):
                failed = isinstance(result, BaseException)
                answered.append(
                    {"id": cluster, "answered": not failed, "error": _error(result) if failed else None}
                )
            if answered and not any(a["error"] for a in answered):
                # Only complete answers are timed: a dead cluster's slot waits out the timeout
                # and would pass that off as the fabric's latency.
                self._latency.add(elapsed)
        return self._latency_report(answered, error)

    def _latency_report(self, answered: list[dict[str, Any]], error: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "script": PROBE_SCRIPT,
            "window": self._latency.size,
            "samples": len(self._latency),
            "p50_ms": self._latency.ms(0.5),
            "p99_ms": self._latency.ms(0.99),
            "last_ms": self._latency.last_ms,
            "error": error,
            "clusters": answered,
        }

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self.probe()
            except Exception:  # the page must keep refreshing whatever one probe hit
                log.exception("dashboard probe failed")
            await asyncio.sleep(max(self._interval - (loop.time() - began), 0.05))

    # ------------------------------------------------------------------ routes

    @web.middleware
    async def _refuse_other_sites(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        headers = request.headers
        why = self._guard.refusal(
            host=headers.get("Host"),
            origin=headers.get("Origin"),
            fetch_site=headers.get("Sec-Fetch-Site"),
            fetch_mode=headers.get("Sec-Fetch-Mode"),
            page=request.path == "/",
        )
        if why is None:
            return await handler(request)
        log.info("refused %s %s: %s", request.method, request.path, why)
        error = {"type": "Forbidden", "code": "forbidden", "message": why}
        return _json({"ok": False, "error": error}, status=403)

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"}
        )

    async def _fleet(self, request: web.Request) -> web.Response:
        snapshot = await self.wait_snapshot()
        return _json(snapshot)

    async def _guild(self, request: web.Request) -> web.Response:
        text = request.match_info["guild_id"].strip()
        if not text.isdigit() or len(text) > 20:
            error = {"type": "ValueError", "code": "bad_request", "message": f"{text!r} is not a guild id"}
            return _json({"ok": False, "guild_id": text, "error": error}, status=400)
        guild_id = int(text)
        started = time.perf_counter()
        try:
            answer = await self.client.request_to_guild(
                self._lookup(guild_id), guild_id=guild_id, timeout=self._timeout
            )
        except ZmqcrossError as exc:
            ms = (time.perf_counter() - started) * 1000.0
            status = 504 if isinstance(exc, RequestTimeout) else 502
            return _json({"ok": False, "guild_id": text, "error": _error(exc), "ms": ms}, status=status)
        ms = (time.perf_counter() - started) * 1000.0
        return _json(
            {
                "ok": True,
                "guild_id": text,
                "ms": ms,
                "answer": answer,
                # Snowflakes do not fit a JavaScript number: the page shows this text, not a re-encoding.
                "answer_text": json.dumps(answer, indent=2, default=str),
            }
        )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
