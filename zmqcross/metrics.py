"""Prometheus metrics for a fleet: :class:`BridgeMetrics` on the bridge, :class:`MachineMetrics` on a machine.

::

    bridge = Bridge(auth_token="...", total_shards=16, metrics_port=9464)   # or by hand:
    metrics = BridgeMetrics(bridge, port=9464, cache=cache_server)
    await metrics.start()     # after or before bridge.start(); close() before or after bridge.close()

``GET http://127.0.0.1:9464/metrics`` then answers in the Prometheus text format, from a
registry of its own (never ``prometheus_client.REGISTRY``, so two bridges in one process,
or a bot's own metrics, do not collide). What is exported:

=========================================  =====================================================
``zmqcross_requests_total{kind,outcome}``  every request the bridge answered or routed, from
                                           :meth:`Bridge.observe`: kind request, relay, eval,
                                           guild_request, ``service:<name>``; outcome ok,
                                           partial, error or a zmqcross error code, anything
                                           else a peer wrote ``other`` (:data:`OUTCOMES`); a
                                           refused call counts under the action it needed:
                                           eval, request, cache, admin, host, with outcome
                                           permission_denied
``zmqcross_request_duration_seconds``      histogram by kind (refusals, answered at once, are
                                           left out)
``zmqcross_clients{agent}``                connected clients by agent
``zmqcross_machines`` (``_standby``,       machines (clients that run or wait for clusters);
``_stale``, ``_unanswered``)               standbys; on another plan; not answering the status
``zmqcross_plan_shards``,                  the bridge's plan; ``zmqcross_plan_info{version}``
``zmqcross_plan_clusters``
``zmqcross_clusters{state}``               cluster processes by state (ready, starting,
                                           retiring...; a state a machine made up:
                                           ``other``); ``zmqcross_clusters_unassigned``:
                                           clusters of the plan that no machine runs
``zmqcross_shards_hosted``,                distinct shards run by a starting or ready cluster;
``zmqcross_guilds``                        guilds of the current (not retiring) clusters
``zmqcross_cluster_*{machine,cluster}``    per cluster: ready, guilds, restarts_total,
                                           heartbeat_age_seconds, uptime_seconds, rss_bytes
``zmqcross_shard_*``                       per shard, labels shard, cluster, machine (one series
                                           each): ``up``, ``latency_seconds``,
                                           ``disconnects_total``, ``resumes_total``
``zmqcross_bridge_*``                      the bridge's own counters (messages, protocol errors,
                                           refused registrations and keys, open requests)
``zmqcross_cache_*``                       with a :class:`CacheServer`: entries, value bytes,
                                           hits, misses, writes, evictions, expirations, saves
                                           and ``hit_ratio`` (once there was a lookup)
``zmqcross_identify_*``                    the IDENTIFY queue: ``waiting`` shards, ``grants_total``,
                                           ``holds_total``, ``wait_seconds_total`` handed out,
                                           ``holding`` (1 while the budget reserve stops grants)
``zmqcross_session_budget_*``              Discord's session budget as the bridge counts it:
                                           ``remaining``, ``total``, ``reserve`` (when known)
=========================================  =====================================================

Values that come from the fleet's status are fetched when Prometheus scrapes (one
:meth:`Bridge.status` per ``max_age`` seconds at most, shared by concurrent scrapes), so
nothing polls the machines while nobody looks and a scrape never shows older numbers
than ``max_age``.

A label never takes text a peer chose: each Prometheus series lives until the process
ends, so a peer that answered with thousands of made-up error codes used to add thousands
of series (5,000, and a 100 MB scrape, from one client allowed only ``request``). Outcomes
and cluster states outside their known sets are counted as ``other``.

The endpoint is served by aiohttp on the bridge's own event loop rather than by
``prometheus_client``'s thread server: the fleet's status is an ``await`` on that loop,
the observer's counters are then touched from one thread only, and a port that cannot be
bound fails :meth:`start` instead of a background thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from . import errors
from ._httpsite import HttpSite
from .cache import CACHE_SERVICE, CacheServer
from .errors import ConfigurationError, ZmqcrossError
from .status import ClusterStatus, FleetStatus, ShardStatus, summarize

if TYPE_CHECKING:
    from .bridge import Bridge
    from .client import Client
    from .cluster.manager import ClusterManager
    from .machine import Machine

__all__ = [
    "CLUSTER_STATES",
    "DEFAULT_MAX_AGE",
    "LATENCY_BUCKETS",
    "METRICS_PATH",
    "OTHER",
    "OUTCOMES",
    "BridgeMetrics",
    "MachineMetrics",
]

log = logging.getLogger("zmqcross.metrics")

METRICS_PATH = "/metrics"
"""Where the exposition is served."""

DEFAULT_MAX_AGE = 1.0
"""Seconds a fleet status is reused by later scrapes before the machines are asked again."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Histogram buckets (seconds): a broadcast_eval over loopback takes about a millisecond."""

OTHER = "other"
"""The label of an outcome or state outside the known set."""

OUTCOMES = frozenset(
    {"ok", "partial", "error", OTHER}
    | {
        cls.code
        for cls in (getattr(errors, name) for name in errors.__all__)
        if isinstance(cls, type) and issubclass(cls, ZmqcrossError)
    }
)
"""The ``outcome`` labels: how a request went, or the code of a zmqcross error."""

CLUSTER_STATES = frozenset({"starting", "ready", "stopping", "stopped", "failed", "retiring", OTHER})
"""The ``state`` labels of ``zmqcross_clusters`` (what :class:`~zmqcross.status.ClusterStatus` shows)."""


def _known(value: str, known: frozenset[str]) -> str:
    return value if value in known else OTHER


# --------------------------------------------------------------------------- metric families


def _cluster_families(rows: Iterable[tuple[str, ClusterStatus]], now: float) -> Iterator[Metric]:
    labels = ["machine", "cluster"]
    ready = GaugeMetricFamily(
        "zmqcross_cluster_ready", "1 when the cluster is ready and answers", labels=labels
    )
    guilds = GaugeMetricFamily("zmqcross_cluster_guilds", "guilds the cluster holds", labels=labels)
    restarts = CounterMetricFamily(
        "zmqcross_cluster_restarts", "times the cluster process was restarted", labels=labels
    )
    beat = GaugeMetricFamily(
        "zmqcross_cluster_heartbeat_age_seconds", "seconds since the cluster's last heartbeat", labels=labels
    )
    uptime = GaugeMetricFamily(
        "zmqcross_cluster_uptime_seconds", "seconds the cluster process has run", labels=labels
    )
    rss = GaugeMetricFamily(
        "zmqcross_cluster_rss_bytes", "resident memory of the cluster process", labels=labels
    )
    shard_labels = ["shard", "cluster", "machine"]
    shard_up = GaugeMetricFamily(
        "zmqcross_shard_up", "1 when the shard's gateway session is ready", labels=shard_labels
    )
    latency = GaugeMetricFamily(
        "zmqcross_shard_latency_seconds", "the shard's gateway heartbeat round trip", labels=shard_labels
    )
    disconnects = CounterMetricFamily(
        "zmqcross_shard_disconnects", "the shard's disconnects since its process started", labels=shard_labels
    )
    resumes = CounterMetricFamily(
        "zmqcross_shard_resumes",
        "the shard's resumed sessions since its process started",
        labels=shard_labels,
    )
    rows = list(rows)
    # One series per shard: the report of the cluster serving it (during a rolling swap the
    # retiring half serves until the new half is live; a ready report wins).
    serving: dict[int, tuple[ShardStatus, str, int]] = {}
    for machine, cluster in rows:
        for shard in cluster.shard_health:
            seen = serving.get(shard.id)
            if seen is None or (shard.up and not seen[0].up) or (cluster.state != "retiring" and shard.up):
                serving[shard.id] = (shard, machine, cluster.id)
    for shard, machine, cid in (serving[sid] for sid in sorted(serving)):
        shard_key = [str(shard.id), str(cid), machine]
        shard_up.add_metric(shard_key, 1.0 if shard.up else 0.0)
        if shard.latency is not None:
            latency.add_metric(shard_key, shard.latency)
        disconnects.add_metric(shard_key, shard.disconnects)
        resumes.add_metric(shard_key, shard.resumes)
    for machine, cluster in rows:
        if cluster.state == "retiring":
            continue  # its replacement reports under the same labels
        key = [machine, str(cluster.id)]
        if cluster.rss is not None:
            rss.add_metric(key, cluster.rss)
        ready.add_metric(key, 1.0 if cluster.ready else 0.0)
        restarts.add_metric(key, cluster.restarts)
        if cluster.guilds is not None:
            guilds.add_metric(key, cluster.guilds)
        if cluster.last_heartbeat is not None:
            beat.add_metric(key, max(now - cluster.last_heartbeat, 0.0))
        if cluster.uptime is not None:
            uptime.add_metric(key, cluster.uptime)
    yield from (ready, guilds, restarts, beat, uptime, rss, shard_up, latency, disconnects, resumes)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


# --------------------------------------------------------------------------- collectors


class _BridgeCollector:
    """Reads the bridge, its last fleet status and the cache each time the registry is collected."""

    def __init__(self, owner: BridgeMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        owner = self._owner
        bridge = owner.bridge
        clients = GaugeMetricFamily("zmqcross_clients", "connected clients by agent", labels=["agent"])
        for agent, count in sorted(Tally(c.agent for c in bridge.clients).items()):
            clients.add_metric([agent], count)
        yield clients
        stats = bridge.statistics()
        yield _counter("zmqcross_bridge_messages_received", "messages the bridge received", stats.messages_in)
        yield _counter("zmqcross_bridge_messages_sent", "messages the bridge sent", stats.messages_out)
        yield _counter(
            "zmqcross_bridge_protocol_errors", "undecodable or oversized messages", stats.protocol_errors
        )
        yield _counter(
            "zmqcross_bridge_refused_registrations",
            "registrations refused (token, version, name)",
            stats.refused_registrations,
        )
        yield _counter("zmqcross_bridge_refused_keys", "CURVE keys refused by ZAP", stats.refused_keys)
        yield _gauge("zmqcross_bridge_open_requests", "requests waiting for an answer", stats.open_requests)
        yield _counter(
            "zmqcross_status_failures", "fleet status queries that failed at scrape", owner.status_failures
        )
        queue = bridge.identify_queue()
        if queue is not None:
            yield from _identify_families(queue)
        status = owner.last_status
        if status is not None:
            yield from _fleet_families(status)
        cache = owner.cache
        if cache is not None:
            yield from _cache_families(cache)


def _identify_families(queue: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("zmqcross_identify_waiting", "shards waiting for their IDENTIFY slot", queue["waiting"])
    yield _counter("zmqcross_identify_grants", "IDENTIFY slots granted", queue["granted"])
    yield _counter(
        "zmqcross_identify_holds", "IDENTIFY asks held by the session budget reserve", queue["held"]
    )
    yield _counter(
        "zmqcross_identify_wait_seconds", "seconds of waiting handed out with grants", queue["waited"]
    )
    yield _gauge(
        "zmqcross_identify_holding",
        "1 while the budget reserve stops every IDENTIFY",
        float(bool(queue["holding"])),
    )
    budget = queue["budget"]
    if budget is not None:
        yield _gauge(
            "zmqcross_session_budget_remaining", "session starts left today, as counted", budget["remaining"]
        )
        yield _gauge("zmqcross_session_budget_total", "session starts a day", budget["total"])
        yield _gauge("zmqcross_session_budget_reserve", "session starts never granted", budget["reserve"])


def _fleet_families(status: FleetStatus) -> Iterator[Metric]:
    summary = summarize(status)
    info = GaugeMetricFamily("zmqcross_plan_info", "the bridge's shard plan", labels=["version"])
    info.add_metric([status.plan_version], 1.0)
    yield info
    yield _gauge("zmqcross_plan_shards", "shards of the plan", status.total_shards)
    yield _gauge("zmqcross_plan_clusters", "clusters of the plan", status.total_clusters)
    yield _gauge(
        "zmqcross_machines", "connected machines (running or waiting for clusters)", summary.machines
    )
    yield _gauge("zmqcross_machines_standby", "machines waiting as standbys", summary.standby)
    yield _gauge("zmqcross_machines_stale", "machines running another plan than the bridge's", summary.stale)
    yield _gauge(
        "zmqcross_machines_unanswered", "machines that did not answer the status", summary.unanswered
    )
    by_state = GaugeMetricFamily("zmqcross_clusters", "cluster processes by state", labels=["state"])
    states: Tally[str] = Tally()
    for state, count in summary.states.items():  # as each machine reported them
        states[_known(state, CLUSTER_STATES)] += count
    for state, count in sorted(states.items()):
        by_state.add_metric([state], count)
    yield by_state
    yield _gauge(
        "zmqcross_clusters_unassigned", "clusters of the plan no machine runs", len(summary.unassigned)
    )
    yield _gauge(
        "zmqcross_shards_hosted", "distinct shards run by a starting or ready cluster", summary.shards
    )
    yield _gauge("zmqcross_guilds", "guilds held by the fleet's clusters", summary.guilds)
    rows = [(m.id, c) for m in status.machines for c in m.clusters]
    yield from _cluster_families(rows, status.taken_at)


def _cache_families(cache: CacheServer) -> Iterator[Metric]:
    stats = cache.statistics()
    yield _gauge("zmqcross_cache_entries", "entries in the bridge's cache", stats.entries)
    yield _gauge("zmqcross_cache_value_bytes", "bytes of the cached values", stats.value_bytes)
    yield _counter("zmqcross_cache_hits", "lookups that found a value", stats.hits)
    yield _counter("zmqcross_cache_misses", "lookups that found nothing", stats.misses)
    yield _counter("zmqcross_cache_writes", "values written", stats.writes)
    yield _counter("zmqcross_cache_evictions", "entries evicted to stay under max_size", stats.evictions)
    yield _counter("zmqcross_cache_expirations", "entries dropped at their TTL", stats.expirations)
    yield _counter("zmqcross_cache_saves", "snapshots written to the persist file", stats.saves)
    lookups = stats.hits + stats.misses
    if lookups:  # no ratio before the first lookup, rather than a made-up 0 or 1
        yield _gauge("zmqcross_cache_hit_ratio", "hits / (hits + misses) since start", stats.hits / lookups)


class _MachineCollector:
    def __init__(self, owner: MachineMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        owner = self._owner
        manager = owner.manager
        machine_id = owner.machine_id
        yield _gauge("zmqcross_machine_standby", "1 while the machine runs no clusters", manager is None)
        client = owner.client
        if client is not None:
            yield _gauge("zmqcross_machine_connected", "1 while registered with the bridge", client.connected)
        if manager is None:
            return
        statuses = manager.statuses()
        by_state = GaugeMetricFamily("zmqcross_clusters", "cluster processes by state", labels=["state"])
        for state, count in sorted(Tally(c.state for c in statuses).items()):
            by_state.add_metric([state], count)
        yield by_state
        yield _gauge(
            "zmqcross_machine_in_flight", "requests handed to clusters, not answered yet", manager.in_flight()
        )
        yield _gauge(
            "zmqcross_guilds",
            "guilds held by this machine's clusters",
            sum(c.guilds or 0 for c in statuses if c.state != "retiring"),
        )
        yield from _cluster_families(((machine_id, c) for c in statuses), time.time())


# --------------------------------------------------------------------------- serving


class _Exposition:
    """``GET /metrics`` on aiohttp; ``prepare`` runs before each scrape (to refresh the status)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        prepare: Callable[[], Awaitable[None]] | None,
    ) -> None:
        if type(port) is not int or not 0 <= port <= 65535:
            raise ConfigurationError(
                f"the metrics port must be a TCP port number (0 picks a free one), not {port!r}"
            )
        self._registry = registry
        self._site = HttpSite(host, port)
        self._prepare = prepare

    @property
    def port(self) -> int:
        return self._site.port

    @property
    def url(self) -> str:
        return self._site.url(METRICS_PATH)

    async def start(self) -> None:
        if self._site.started:
            raise RuntimeError("the metrics endpoint is already started")
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._scrape)
        try:
            await self._site.start(app)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {self._site.host} port {self._site.port}: {exc.strerror or exc}"
            ) from None
        log.info("metrics on %s", self.url)

    async def close(self) -> None:
        await self._site.close()

    async def _scrape(self, request: web.Request) -> web.Response:
        if self._prepare is not None:
            await self._prepare()
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


class BridgeMetrics:
    """Prometheus metrics of a :class:`~zmqcross.Bridge`, served on ``host:port`` at ``/metrics``.

    Usually created by ``Bridge(metrics_port=...)``; by hand it works the same::

        metrics = BridgeMetrics(bridge, port=9464, cache=cache_server)
        await metrics.start()
        ...
        await metrics.close()

    :meth:`start` makes it the bridge's observer (:meth:`Bridge.observe`), calling any
    observer set before it too; :meth:`close` puts that one back. ``cache`` is the
    bridge's :class:`CacheServer`; without it, the server registered as the bridge's
    ``"cache"`` service is found at each scrape. ``port=0`` picks a free port, readable
    from :attr:`port` after :meth:`start`. Fleet values come from :meth:`Bridge.status`
    (``status_timeout`` per machine), at most once per ``max_age`` seconds.
    """

    def __init__(
        self,
        bridge: Bridge,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        cache: CacheServer | None = None,
        max_age: float = DEFAULT_MAX_AGE,
        status_timeout: float = 2.0,
    ) -> None:
        self.bridge = bridge
        self.registry = CollectorRegistry(auto_describe=False)
        """The registry every value of this bridge is in (a dedicated one, not the global)."""
        self.requests = Counter(
            "zmqcross_requests",
            "requests the bridge answered or routed, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "zmqcross_request_duration_seconds",
            "seconds from a request's arrival at the bridge to its answer, by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_BridgeCollector(self))
        self._cache = cache
        self._max_age = float(max_age)
        self._status_timeout = float(status_timeout)
        self._server = _Exposition(self.registry, host=host, port=port, prepare=self.refresh)
        self._status: FleetStatus | None = None
        self._status_at = -math.inf
        self._refreshing: asyncio.Future[None] | None = None
        self._unobserve: Callable[[], None] | None = None
        self.status_failures = 0
        """Scrapes whose fleet status query failed (the fleet's values are then left out)."""

    @property
    def port(self) -> int:
        """The HTTP port (the real one after :meth:`start`, also when 0 was asked for)."""
        return self._server.port

    @property
    def url(self) -> str:
        """Where to scrape, e.g. ``http://127.0.0.1:9464/metrics``."""
        return self._server.url

    @property
    def cache(self) -> CacheServer | None:
        """The cache whose numbers are exported: the one given, or the bridge's ``"cache"`` service."""
        if self._cache is not None:
            return self._cache
        service = self.bridge.services.get(CACHE_SERVICE)
        owner = service.owner if service is not None else None
        return owner if isinstance(owner, CacheServer) else None

    @property
    def last_status(self) -> FleetStatus | None:
        """The fleet status the last scrape used (``None`` before one, or after it failed)."""
        return self._status

    async def start(self) -> None:
        """Observe the bridge's requests and listen for scrapes."""
        await self._server.start()
        self._unobserve = self.bridge.observe(self._observe)

    async def close(self) -> None:
        """Stop observing and listening; safe to call twice."""
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        await self._server.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def observe(self, kind: str, outcome: str, seconds: float) -> None:
        """Count one answered request (what :meth:`Bridge.observe` calls).

        An ``outcome`` outside :data:`OUTCOMES` (a code a peer made up) counts as ``other``.
        """
        self.requests.labels(kind, _known(outcome, OUTCOMES)).inc()
        if outcome != "permission_denied":  # refused before any work: not a latency
            self.latency.labels(kind).observe(seconds)

    def _observe(self, kind: str, outcome: str, seconds: float) -> None:
        self.observe(kind, outcome, seconds)

    async def refresh(self) -> None:
        """Ask the bridge for the fleet's status unless the last one is younger than ``max_age``.

        Concurrent scrapes share one query.
        """
        if time.monotonic() - self._status_at < self._max_age:
            return
        if self._refreshing is None or self._refreshing.done():
            # done: a scrape that started it was cancelled (its client hung up) before it finished
            self._refreshing = asyncio.ensure_future(self._query())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if refreshing.done() and self._refreshing is refreshing:
                self._refreshing = None

    async def _query(self) -> None:
        try:
            self._status = await self.bridge.status(timeout=self._status_timeout)
        except (ZmqcrossError, RuntimeError) as exc:  # RuntimeError: the bridge is not started
            self.status_failures += 1
            self._status = None
            log.warning("no fleet status for the metrics: %s", exc)
        self._status_at = time.monotonic()


class MachineMetrics:
    """Prometheus metrics of one machine's clusters, served on ``host:port`` at ``/metrics``.

    ``target`` is a :class:`~zmqcross.Machine` (its manager is looked up at each scrape,
    so a standby that takes over starts reporting clusters) or a :class:`ClusterManager`.
    Exports ``zmqcross_cluster_*{machine,cluster}``, ``zmqcross_clusters{state}``,
    ``zmqcross_guilds``, ``zmqcross_machine_in_flight``, ``zmqcross_machine_standby`` and,
    for a Machine, ``zmqcross_machine_connected``. ``machine_id`` labels the clusters
    (default: the machine's client id, or ``"local"`` for a bare manager).
    """

    def __init__(
        self,
        target: Machine | ClusterManager,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        machine_id: str | None = None,
    ) -> None:
        self.target = target
        client = self.client
        self.machine_id = machine_id or (client.id if client is not None else "local")
        self.registry = CollectorRegistry(auto_describe=False)
        """This machine's registry (a dedicated one, not the global)."""
        self.registry.register(_MachineCollector(self))
        self._server = _Exposition(self.registry, host=host, port=port, prepare=None)

    @property
    def client(self) -> Client | None:
        """The machine's :class:`Client`, or ``None`` for a bare manager."""
        from .cluster.manager import ClusterManager

        return None if isinstance(self.target, ClusterManager) else self.target.client

    @property
    def manager(self) -> ClusterManager | None:
        """The manager whose clusters are reported (``None`` for a standby machine)."""
        from .cluster.manager import ClusterManager

        if isinstance(self.target, ClusterManager):
            return self.target
        return self.target.manager

    @property
    def port(self) -> int:
        """The HTTP port (the real one after :meth:`start`)."""
        return self._server.port

    @property
    def url(self) -> str:
        """Where to scrape."""
        return self._server.url

    async def start(self) -> None:
        """Listen for scrapes."""
        await self._server.start()

    async def close(self) -> None:
        """Stop listening; safe to call twice."""
        await self._server.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
