"""Percentiles, the results table, and the side-by-side comparison with the original."""

from __future__ import annotations

import math
from typing import Any


def summarize(samples_ms: list[float]) -> dict[str, Any]:
    """min/p50/p90/p99/max/mean by the nearest-rank method (as the original's harness computes them)."""
    s = sorted(samples_ms)
    if not s:
        return {"n": 0}

    def rank(p: float) -> float:
        return round(s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))], 3)

    return {
        "n": len(s),
        "min": round(s[0], 3),
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": round(s[-1], 3),
        "mean": round(sum(s) / len(s), 3),
    }


def table(cases: dict[str, dict[str, Any]]) -> str:
    """The seed's latency table: one row per case."""
    lines = [f"{'case':34} {'n':>5} {'min':>9} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}  (ms)"]
    for key, case in cases.items():
        if "broadcast_evals_per_sec" in case:
            lat = case["latency_ms"]
            lines.append(
                f"{key:34} {case['completed']:>5} {'':>9} {lat['p50']:>9.2f} {lat['p90']:>9.2f} {lat['p99']:>9.2f} "
                f"{lat['max']:>9.2f}  {case['broadcast_evals_per_sec']:.0f} evals/s, {case['in_flight']} in flight"
            )
            continue
        if not case.get("n"):
            lines.append(f"{key:34} {'-':>5}  {case.get('error', 'no samples')}")
            continue
        note = " (time-boxed)" if case.get("stopped_early") else ""
        lines.append(
            f"{key:34} {case['n']:>5} {case['min']:>9.2f} {case['p50']:>9.2f} {case['p90']:>9.2f} "
            f"{case['p99']:>9.2f} {case['max']:>9.2f}{note}"
        )
    return "\n".join(lines)


def compare(ours: dict[str, Any], original: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Ratio zmqcross/original per case (below 1 is faster), as a table and as data."""
    rows = [f"{'case':34} {'ours p50':>10} {'orig p50':>10} {'ratio':>7} {'ours p99':>10} {'orig p99':>10} {'ratio':>7}"]
    data: dict[str, Any] = {}
    for key, theirs in original.get("cases", {}).items():
        mine = ours["cases"].get(key)
        if not mine:
            continue
        if "broadcast_evals_per_sec" in theirs:
            ratio = mine["broadcast_evals_per_sec"] / theirs["broadcast_evals_per_sec"]
            data[key] = {"throughput_ratio": round(ratio, 3)}
            rows.append(
                f"{key:34} {mine['broadcast_evals_per_sec']:>9.0f}/s {theirs['broadcast_evals_per_sec']:>8.0f}/s "
                f"{ratio:>6.2f}x  (throughput: higher is better)"
            )
            continue
        if not mine.get("n") or not theirs.get("n"):
            continue
        p50 = mine["p50"] / theirs["p50"]
        p99 = mine["p99"] / theirs["p99"]
        data[key] = {"p50_ratio": round(p50, 3), "p99_ratio": round(p99, 3)}
        rows.append(
            f"{key:34} {mine['p50']:>10.2f} {theirs['p50']:>10.2f} {p50:>7.2f} {mine['p99']:>10.2f} "
            f"{theirs['p99']:>10.2f} {p99:>7.2f}"
        )
    mem_o = original.get("memory", {}).get("cluster", {})
    mem_m = ours.get("memory", {}).get("cluster", {})
    if mem_o.get("mean_mb") and mem_m.get("mean_mb"):
        ratio = mem_m["mean_mb"] / mem_o["mean_mb"]
        data["cluster_rss"] = {"ratio": round(ratio, 3)}
        rows.append(f"{'cluster RSS (mean MB)':34} {mem_m['mean_mb']:>10.1f} {mem_o['mean_mb']:>10.1f} {ratio:>7.2f}")
    return "\n".join(rows), data
