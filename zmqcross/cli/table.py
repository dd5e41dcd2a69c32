"""Text renderings of fleet records for ``zmqcross status`` and ``zmqcross reshard``; pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..status import ClusterStatus, FleetStatus, MachineStatus

__all__ = ["render_identify", "render_plan", "render_status", "shard_ranges"]


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart; trailing blanks trimmed."""
    rows = [list(header), *map(list, rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def shard_ranges(shards: Iterable[int]) -> str:
    """``0-3,8,10-11``: consecutive shard ids folded into ranges."""
    parts: list[str] = []
    run: list[int] = []
    for shard in sorted(shards):
        if run and shard != run[-1] + 1:
            parts.append(_span(run))
            run = []
        run.append(shard)
    if run:
        parts.append(_span(run))
    return ",".join(parts) or "-"


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h07m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _age(cluster: ClusterStatus, now: float) -> str:
    if cluster.last_heartbeat is None:
        return "-"
    return f"{max(0.0, now - cluster.last_heartbeat):.1f}s ago"


def _state(c: ClusterStatus) -> str:
    if c.exit_code is not None:
        return f"{c.state} (exit {c.exit_code})"
    return c.state if c.live else f"{c.state}, held"  # a rolling swap's new half, not live yet


def _yes(flag: bool, applies: bool) -> str:
    return ("yes" if flag else "no") if applies else "-"


def _machine_row(m: MachineStatus) -> list[str]:
    bot = m.agent == "bot"
    note = "leaving" if m.leaving else ""
    if m.error:
        note = f"no status: {m.error}"
    elif m.stalled:
        note = f"stalled: {m.stalled}"
    return [
        m.id,
        m.agent,
        m.address or "-",
        m.plan_version or "-",
        _yes(m.stale, bot),
        _yes(m.standby, bot),
        note,
    ]


def render_status(status: FleetStatus) -> str:
    """The fleet as people read it: the plan, one row per client, one row per cluster, what is unassigned."""
    lines = [
        f"plan {status.plan_version}: {status.total_shards} shards in {status.total_clusters} clusters",
        "",
    ]
    lines += table(
        ("MACHINE", "AGENT", "ADDRESS", "PLAN", "STALE", "STANDBY", "NOTE"),
        (_machine_row(m) for m in status.machines),
    )
    clusters = sorted(
        ((c, m) for m in status.machines for c in m.clusters), key=lambda cm: (cm[0].id, cm[0].state)
    )
    lines.append("")
    if clusters:
        lines += table(
            ("CLUSTER", "MACHINE", "SHARDS", "PID", "STATE", "GUILDS", "UPTIME", "RESTARTS", "HEARTBEAT"),
            (
                [
                    str(c.id),
                    m.id,
                    shard_ranges(c.shards),
                    str(c.pid) if c.pid is not None else "-",
                    _state(c),
                    str(c.guilds) if c.guilds is not None else "-",
                    duration(c.uptime),
                    str(c.restarts),
                    _age(c, status.taken_at),
                ]
                for c, m in clusters
            ),
        )
    else:
        lines.append("no clusters are running")
    for c, m in clusters:
        if c.waiting:
            lines += ["", f"cluster {c.id} on {m.id} waits: {c.waiting}"]
    for c, m in clusters:
        if c.last_error:  # why it last stopped unasked: the last lines, indented under its id
            lines += ["", f"cluster {c.id} on {m.id}, last error:"]
            lines += [f"    {line}" for line in c.last_error.splitlines()[-6:]]
    unassigned = f"clusters {', '.join(map(str, status.unassigned))}" if status.unassigned else "none"
    lines += ["", f"unassigned: {unassigned}"]
    if status.standbys:
        lines.append(f"standbys: {', '.join(status.standbys)}")
    up = {s.id for c, _ in clusters for s in c.shard_health if s.up}  # a retiring cluster may still serve one
    down = [(s, c, m) for c, m in clusters if c.state != "retiring" for s in c.shard_health if s.id not in up]
    if down:
        lines += [
            "",
            "shards down: "
            + "; ".join(
                f"{s.id} ({s.state} for {s.down_for:.0f} s, cluster {c.id} on {m.id})" for s, c, m in down
            ),
        ]
    if status.restart is not None:
        lines += ["", f"restart: {status.restart.get('progress', '?')}"]
    if status.identify is not None:
        lines += ["", *render_identify(status.identify)]
    return "\n".join(lines)


def render_identify(queue: dict[str, Any]) -> list[str]:
    """The bridge's IDENTIFY queue (``FleetStatus.identify``) in a few lines."""
    lines = [
        f"identify queue: max_concurrency {queue['max_concurrency']}, one IDENTIFY per "
        f"{queue['interval']:g} s per bucket; {queue['waiting']} waiting, {queue['granted']} granted, "
        f"{queue['held']} held"
    ]
    for bucket in queue["buckets"]:
        lines.append(
            f"    bucket {bucket['bucket']}: shards {shard_ranges(bucket['waiting'])} wait, "
            f"free in {bucket['free_in']:g} s"
        )
    budget = queue.get("budget")
    if budget is None:
        lines.append("session budget: not counted (no Discord token at the bridge, no session_budget)")
    else:
        lines.append(
            f"session budget: {budget['remaining']} of {budget['total']} left today, {budget['reserve']} "
            f"kept in reserve, resets in {duration(budget['reset_in'])}"
        )
    if queue.get("holding"):
        lines.append(f"HOLDING: {queue['holding']}")
    return lines


def render_plan(answer: dict[str, Any]) -> str:
    """The bridge's answer to a reshard, as one line."""
    return (
        f"plan {answer['plan_version']}: {answer['total_shards']} shards in "
        f"{answer['total_clusters']} clusters; machines with rolling restarts replace their "
        "clusters one at a time (see `zmqcross status`)"
    )


def render_shards(status: FleetStatus) -> str:
    """One line per shard (``zmqcross status --shards``): state, latency, idle, disconnects; bad ones flagged."""
    rows = []
    for m in status.machines:
        for c in m.clusters:
            if c.state == "retiring":
                continue
            for s in c.shard_health:
                rows.append(
                    (
                        s.id,
                        [
                            str(s.id),
                            str(c.id),
                            m.id,
                            s.state,
                            f"{s.latency * 1000:.0f} ms" if s.latency is not None else "-",
                            f"{s.idle:.1f}s" if s.idle is not None else "-",
                            str(s.disconnects),
                            str(s.resumes),
                            "" if s.up else f"DOWN for {s.down_for:.0f} s",
                        ],
                    )
                )
    if not rows:
        return "no shard reports yet"
    header = ("SHARD", "CLUSTER", "MACHINE", "STATE", "LATENCY", "IDLE", "DISCONNECTS", "RESUMES", "")
    return "\n".join(table(header, (row for _, row in sorted(rows, key=lambda r: r[0]))))
