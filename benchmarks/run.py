"""`make bench`: the seed's latency table for zmqcross, measured like the original's harness.

1 bridge (this process, where cases are timed), 4 machines x 2 clusters x 2 shards, 20,000
guilds on the offline gateway, CURVE on. Then floor rows (bare pyzmq + pipes, same shape:
one broadcast at a time, and 32 in flight batched at every hop),
a scale sweep, and cold starts and whole-fleet restarts against Discord's IDENTIFY limits
(16 shards, max_concurrency 1 and 4, a 0.5 s window: time to all ready, and to every cluster
restarted one at a time, against the floor, and refused IDENTIFYs), and a simulated fleet
of 64, 256 and 1,024 clusters against one bridge (benchmarks/simfleet.py). Writes
benchmarks/results/latest.json; `--compare FILE` prints the ratio zmqcross / original per
case against a result file of ../shared/anchors/node-dch; `--only` runs some sections.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import CpuMeter, cpu_seconds, host_cpu_seconds  # noqa: E402
from fleet import Fleet, fleet  # noqa: E402
from ceiling import measure_ceiling  # noqa: E402
from floor import measure_floor, measure_floor_throughput  # noqa: E402
from simfleet import measure_sim  # noqa: E402
from stats import compare, summarize, table  # noqa: E402

import zmqcross  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GUILD_12345 = (150000000000 + 12345) << 22  # shard 9 of 16, as in the original's case 3

CASE_5 = (
    "{'client': bot.user, 'guilds': list(bot.guilds), "
    "'roles': [role for guild in bot.guilds for role in guild.roles], "
    "'channels': list(bot.get_all_channels())}"
)


SECTIONS = ("main", "sweep", "cold", "sim")
"""`--only` picks from these: the main table (and floor), the scale sweep, cold starts, the simulated fleet."""


class Profile:
    """How much to measure: the full run, or --quick."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.guilds = 2000 if quick else 20000
        self.n = 30 if quick else 100
        self.warmup = 5 if quick else 10
        self.heavy_warmup = 1 if quick else 2
        self.heavy_box = {"4_guilds_cache_values": 5.0 if quick else 40.0, "5_this_guilds_roles_channels": 5.0 if quick else 60.0}
        self.throughput_seconds = 2.0 if quick else 5.0
        self.sweep = (8, 16) if quick else (8, 16, 32, 64)
        self.sweep_n = 30 if quick else 100
        self.sim_machines = (8, 32) if quick else (8, 32, 128)  # x 8 clusters: 64, 256 and 1,024 clusters
        self.sim_n = 30 if quick else 100


def rss_mb(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def measure(
    call: Callable[[], Awaitable[Any]],
    check: Callable[[Any], bool],
    *,
    n: int,
    warmup: int,
    box: float | None = None,
) -> dict[str, Any]:
    """Warm up, then time ``n`` calls one at a time (fewer if ``box`` seconds run out); count bad answers."""
    failures = 0
    for _ in range(warmup):
        await call()
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(n):
        gc.collect(0)
        t0 = time.perf_counter()
        result = await call()
        elapsed = (time.perf_counter() - t0) * 1000
        if check(result):
            samples.append(elapsed)
        else:
            failures += 1
        del result
        if box is not None and time.perf_counter() - started > box:
            break
    out = summarize(samples)
    out.update(warmup=warmup, failures=failures)
    if box is not None and len(samples) + failures < n:
        out["stopped_early"] = True
    return out


async def throughput(bridge: zmqcross.Bridge, seconds: float, in_flight: int = 32) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal failures
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                result = await bridge.broadcast_eval("1+1")
                ok = result == [2] * len(result)
            except zmqcross.ZmqcrossError:
                ok = False
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    took = time.perf_counter() - started
    return {
        "in_flight": in_flight,
        "seconds": round(took, 3),
        "completed": len(latencies),
        "failures": failures,
        "broadcast_evals_per_sec": round(len(latencies) / took, 1),
        "latency_ms": summarize(latencies),
    }


async def send_all_shards(fleet_: Fleet, n: int, warmup: int) -> dict[str, Any]:
    """A message from the bridge until every cluster has acknowledged it (each acks with Shard.send)."""
    acks: dict[int, set[int]] = {}
    waiting: dict[int, asyncio.Future[None]] = {}

    def on_ack(message: zmqcross.IncomingMessage, client: zmqcross.ClientInfo) -> None:
        data = message.data
        seq = data.get("ack") if isinstance(data, dict) else None
        if seq in waiting:
            acks.setdefault(seq, set()).add(data["cluster"])
            if len(acks[seq]) == fleet_.clusters and not waiting[seq].done():
                waiting[seq].set_result(None)

    fleet_.bridge.on("client_message", on_ack)
    seq = 0

    async def one() -> bool:
        nonlocal seq
        seq += 1
        waiting[seq] = asyncio.get_running_loop().create_future()
        await fleet_.bridge.send({"seq": seq})
        await asyncio.wait_for(waiting[seq], 10)
        return True

    return await measure(one, bool, n=n, warmup=warmup)


async def main_fleet(profile: Profile, results: dict[str, Any]) -> None:
    cases: dict[str, Any] = {}
    results["cases"] = cases
    started = time.monotonic()
    async with fleet(guilds=profile.guilds) as f:
        results["startup_s"] = round(time.monotonic() - started, 1)
        bridge = f.bridge
        ours = [os.getpid(), f.gateway.pid, *(p.pid for p in f.machines.values()), *f.pids["clusters"]]
        host0, ours0 = host_cpu_seconds(), sum(cpu_seconds(p) for p in ours)
        wall0 = time.monotonic()
        n, w = profile.n, profile.warmup
        print("measuring ...", file=sys.stderr, flush=True)

        kinds = {"bridge (and caller)": [os.getpid()], "machines": [p.pid for p in f.machines.values()],
                 "clusters": list(f.pids["clusters"])}
        meter = CpuMeter(kinds)
        cases["1_math"] = await measure(lambda: bridge.broadcast_eval("1+1"), lambda r: r == [2] * 8, n=n, warmup=w)
        cases["1_math"]["cpu_us_per_call"] = meter.per_call(n + w)
        cases["2_guilds_cache_size"] = await measure(
            lambda: bridge.broadcast_eval("len(bot.guilds)"), lambda r: sum(r) == profile.guilds, n=n, warmup=w
        )
        gid = GUILD_12345 if profile.guilds > 12345 else (150000000000 + 1234) << 22
        cases["3_guilds_cache_get"] = await measure(
            lambda: bridge.broadcast_eval(f"bot.get_guild({gid})"),
            lambda r: sum(g is not None for g in r) == 1,
            n=n,
            warmup=w,
        )
        cases["6a_request_to_guild"] = await measure(
            lambda: bridge.request_to_guild({"guild_id": gid}), lambda r: r["id"] == gid, n=n, warmup=w
        )
        samples = await bridge.request({"op": "time_requests", "n": n, "warmup": w}, client="machine-1", timeout=120)
        cases["6b_machine_request_to_bridge"] = {**summarize(samples), "warmup": w, "failures": 0,
                                                 "note": "timed in machine-1"}
        meter = CpuMeter(kinds)
        cases["7_throughput_math"] = tp = await throughput(bridge, profile.throughput_seconds)
        tp["cpu_us_per_call"] = meter.per_call(tp["completed"] + tp["failures"])
        cases["8_send_all_shards"] = await send_all_shards(f, n, w)
        if f.cache is not None:
            timed = await bridge.request({"op": "time_cache", "n": n, "warmup": w}, client="machine-1", timeout=120)
            cases["9_cache_get"] = {**summarize(timed["get"]), "warmup": w, "failures": 0, "note": "timed in machine-1"}
            cases["9_cache_set"] = {**summarize(timed["set"]), "warmup": w, "failures": 0, "note": "timed in machine-1"}
        box = profile.heavy_box
        cases["4_guilds_cache_values"] = await measure(
            lambda: bridge.broadcast_eval("list(bot.guilds)"),
            lambda r: sum(len(x) for x in r) == profile.guilds,
            n=n,
            warmup=profile.heavy_warmup,
            box=box["4_guilds_cache_values"],
        )
        cases["5_this_guilds_roles_channels"] = await measure(
            lambda: bridge.broadcast_eval(CASE_5),
            lambda r: sum(len(x["guilds"]) for x in r) == profile.guilds,
            n=n,
            warmup=profile.heavy_warmup,
            box=box["5_this_guilds_roles_channels"],
        )
        wall = time.monotonic() - wall0
        host, ours_cpu = host_cpu_seconds() - host0, sum(cpu_seconds(p) for p in ours) - ours0
        results["host_contention"] = {
            "wall_s": round(wall, 1),
            "host_cpu_s": round(host, 1),
            "benchmark_cpu_s": round(ours_cpu, 1),
            "foreign_cpu_s": round(max(host - ours_cpu, 0.0), 1),
            "foreign_share_of_capacity": round(max(host - ours_cpu, 0.0) / (wall * (os.cpu_count() or 1)), 3),
        }
        machines = [(await bridge.request({"op": "rss"}, client=name))["rss_mb"] for name in f.machines]
        clusters = await bridge.broadcast_eval(
            "int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024"
        )
        results["memory"] = {
            "note": "VmRSS of each process after all cases",
            "bridge": _mem([rss_mb()]),
            "machine": _mem(machines),
            "cluster": _mem(clusters),
            "gateway": _mem([rss_mb(f.gateway.pid)]),
        }


def _mem(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "min_mb": round(min(values), 1),
        "max_mb": round(max(values), 1),
        "mean_mb": round(sum(values) / len(values), 1),
        "per_process_mb": [round(v, 1) for v in values],
    }


async def sweep(profile: Profile, results: dict[str, Any]) -> None:
    rows: dict[str, Any] = {}
    results["scale_sweep"] = rows
    for clusters in profile.sweep:
        async with fleet(total_shards=clusters, shards_per_cluster=1, guilds=clusters * 10, cache=False) as f:
            stats = await measure(lambda f=f: f.bridge.broadcast_eval("1+1"), lambda r, c=clusters: r == [2] * c,
                                  n=profile.sweep_n, warmup=profile.warmup)
            rows[str(clusters)] = {"clusters": clusters, "1_math": stats}
            print(f"sweep {clusters:>3} clusters: 1_math p50 {stats['p50']:.2f} ms, p99 {stats['p99']:.2f} ms",
                  file=sys.stderr, flush=True)
        if clusters == profile.sweep[0]:
            async with fleet(total_shards=16, shards_per_cluster=2, guilds=160, curve=False, cache=False) as f:
                results.setdefault("cases", {})["1_math_curve_off"] = await measure(
                    lambda f=f: f.bridge.broadcast_eval("1+1"), lambda r: r == [2] * 8, n=profile.n,
                    warmup=profile.warmup
                )


async def cold_start(results: dict[str, Any]) -> None:
    """Time to every shard ready from a cold start against an offline Discord enforcing the IDENTIFY limits.

    16 shards in 8 clusters on 4 machines, a 0.5 s window: the floor is ceil(16 / max_concurrency)
    windows; the bridge's queue must get there with no refused IDENTIFY.
    """
    rows: dict[str, Any] = {}
    results["cold_start"] = rows
    window = 0.5
    for concurrency in (1, 4):
        async with fleet(total_shards=16, shards_per_cluster=2, guilds=1600, cache=False,
                         max_concurrency=concurrency, identify_window=window) as f:
            identifies = await asyncio.to_thread(_get_json, f.api.removesuffix("/api/v10") + "/_offline/identifies")
            records = identifies["identifies"]
            times = sorted(r["time"] for r in records)
            floor = math.ceil(16 / concurrency) * window
            # Its neighbour: a whole-fleet restart (a code deploy), one cluster at a time.
            began = time.monotonic()
            await f.bridge.restart(all=True)
            restart_s = time.monotonic() - began
            after = await asyncio.to_thread(_get_json, f.api.removesuffix("/api/v10") + "/_offline/identifies")
            later = after["identifies"][len(records):]
            rows[str(concurrency)] = {
                "max_concurrency": concurrency, "shards": 16, "window_s": window, "floor_s": floor,
                "ready_s": round(f.ready_after, 2), "identify_span_s": round(times[-1] - times[0], 2),
                "identifies": len(records), "refused": sum(1 for r in records if not r["accepted"]),
                "restart_all_s": round(restart_s, 2), "restart_identifies": len(later),
                "restart_refused": sum(1 for r in later if not r["accepted"]),
            }
        row = rows[str(concurrency)]
        print(f"cold start, max_concurrency {concurrency}: ready in {row['ready_s']} s (floor {floor} s), "
              f"refused {row['refused']}; restart all: {row['restart_all_s']} s", file=sys.stderr, flush=True)


async def simulated(profile: Profile, results: dict[str, Any]) -> None:
    """The bridge at scale: simulated machines of 8 clusters each (benchmarks/simfleet.py)."""
    rows: dict[str, Any] = {}
    results["simulated"] = rows
    for machines in profile.sim_machines:
        row = await measure_sim(machines, 8, n=profile.sim_n, warmup=profile.warmup,
                                throughput_s=profile.throughput_seconds)
        rows[str(row["clusters"])] = row
        storm, evals, tp = row["registration_storm"], row["broadcast_eval_ms"], row["throughput"]
        print(f"simulated {machines} machines x 8 = {row['clusters']} clusters: all placed in {storm['all_placed_s']} s "
              f"({storm['clusters_placed']} placed, {storm['placed_twice']} twice); broadcast_eval p50 {evals['p50']:.2f} "
              f"ms p99 {evals['p99']:.2f} ms; {tp['evals_per_sec']:.0f} evals/s; bridge CPU {tp['bridge_cpu_us_per_eval']:.0f} "
              f"us/eval ({row['bridge_cpu_us_per_eval_per_cluster']:.2f} us per cluster), idle share "
              f"{row['bridge_idle_cpu_share']:.3f}; bridge RSS {row['bridge_rss_mb']} MB", file=sys.stderr, flush=True)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def report_main(results: dict[str, Any]) -> None:
    print(table(results["cases"]))
    ours = results["cases"]["7_throughput_math"]["broadcast_evals_per_sec"]
    floor = results.get("floor", {})
    if floor:
        ratio = results["cases"]["1_math"]["p50"] / floor["p50"]
        results["overhead_over_floor_1_math_p50"] = round(ratio, 2)
        print(f"{'floor: bare pyzmq + pipes':34} {floor['n']:>5} {floor['min']:>9.2f} {floor['p50']:>9.2f} "
              f"{floor['p90']:>9.2f} {floor['p99']:>9.2f} {floor['max']:>9.2f}   1_math/floor p50 = {ratio:.2f}x")
    tp_floor = results.get("floor_throughput")
    if tp_floor:
        print(f"floor throughput, batched at every hop, {tp_floor['in_flight']} in flight: "
              f"{tp_floor['broadcasts_per_sec']:.0f} broadcasts/s; 7_throughput_math is "
              f"{ours / tp_floor['broadcasts_per_sec']:.2f}x of it")
    ceiling = results.get("ceiling_throughput")
    if ceiling:
        cpu = ceiling["cpu_us_per_eval"]
        print(f"ceiling, batch-first in Python with each hop's own work, {ceiling['in_flight']} in flight: "
              f"{ceiling['evals_per_sec']:.0f} evals/s (7_throughput_math is {ours / ceiling['evals_per_sec']:.2f}x "
              f"of it); CPU per eval (us): bridge {cpu['bridge']:.0f}, agents {cpu['agents']:.0f}, "
              f"children {cpu['children']:.0f}; total {cpu['total']:.0f}")
    serial = results.get("ceiling_serial")
    if serial:
        ratio = results["cases"]["1_math"]["p50"] / serial["p50_ms"]
        print(f"ceiling, one eval at a time: p50 {serial['p50_ms']:.2f} ms (1_math p50 is {ratio:.2f}x of it); "
              f"CPU per eval (us): total {serial['cpu_us_per_eval']['total']:.0f}")
    for case in ("1_math", "7_throughput_math"):
        cpu = results["cases"][case].get("cpu_us_per_call")
        if cpu:
            parts = ", ".join(f"{kind} {us:.0f}" for kind, us in cpu.items() if kind != "total")
            print(f"CPU per eval in {case} (us, all threads): {parts}; total {cpu['total']:.0f}")
    mem = results["memory"]
    print(f"RSS MB: bridge {mem['bridge']['mean_mb']}, machines {mem['machine']['min_mb']}-{mem['machine']['max_mb']}, "
          f"clusters {mem['cluster']['min_mb']}-{mem['cluster']['max_mb']} (mean {mem['cluster']['mean_mb']}), "
          f"gateway {mem['gateway']['mean_mb']}")
    hc = results["host_contention"]
    print(f"other processes used {hc['foreign_cpu_s']} CPU s of {hc['wall_s']} s x {os.cpu_count()} cores "
          f"(share {hc['foreign_share_of_capacity']}); a share above ~0.1 means a noisy run")


def report(results: dict[str, Any], original: dict[str, Any] | None) -> None:
    print()
    print(f"zmqcross {zmqcross.__version__}: 1 bridge, 4 machines, 8 clusters, 16 shards, "
          f"{results['topology']['guilds']} guilds, CURVE on ({'quick' if results['quick'] else 'full'} run)")
    if "1_math" in results.get("cases", {}):
        report_main(results)
    print()
    for row in results.get("cold_start", {}).values():
        print(f"cold start, 16 shards, max_concurrency {row['max_concurrency']}, {row['window_s']} s window: all ready "
              f"in {row['ready_s']} s from the machines' start (IDENTIFYs over {row['identify_span_s']} s; floor "
              f"{row['floor_s']} s), {row['refused']} of {row['identifies']} IDENTIFYs refused")
        print(f"restart all, 16 shards in 8 clusters one at a time, max_concurrency {row['max_concurrency']}: "
              f"{row['restart_all_s']} s (IDENTIFY floor {row['floor_s']} s), {row['restart_refused']} of "
              f"{row['restart_identifies']} IDENTIFYs refused")
    for row in results.get("simulated", {}).values():
        storm, evals, tp = row["registration_storm"], row["broadcast_eval_ms"], row["throughput"]
        print(f"simulated {row['machines']} machines, {row['clusters']} clusters: placed in {storm['all_placed_s']} s "
              f"({storm['clusters_placed']} placed, {storm['placed_twice']} twice), broadcast_eval p50 "
              f"{evals['p50']:.2f} ms p99 {evals['p99']:.2f} ms, {tp['evals_per_sec']:.0f} evals/s at 32 in flight, "
              f"bridge CPU {tp['bridge_cpu_us_per_eval']:.0f} us/eval ({row['bridge_cpu_us_per_eval_per_cluster']:.2f} "
              f"per cluster; idle it uses {row['bridge_idle_cpu_share']:.1%} of a core), RSS {row['bridge_rss_mb']} MB")
    for name, row in results.get("scale_sweep", {}).items():
        print(f"scale sweep {name:>3} clusters: 1_math p50 {row['1_math']['p50']:.2f} ms, p99 {row['1_math']['p99']:.2f} ms")
    if original is not None and "cases" in results:
        text, ratios = compare(results, original)
        results["compare"] = ratios
        print("\nzmqcross / original (below 1 is faster):")
        print(text)


async def run(args: argparse.Namespace) -> int:
    profile = Profile(args.quick)
    results: dict[str, Any] = {
        "package": "zmqcross",
        "version": zmqcross.__version__,
        "quick": profile.quick,
        "host": {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "topology": {"bridges": 1, "machines": 4, "clusters": 8, "total_shards": 16, "shards_per_cluster": 2,
                     "guilds": profile.guilds, "curve": True},
        "iterations": profile.n,
        "warmup": profile.warmup,
    }
    started = time.monotonic()
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    if "main" in only:
        await main_fleet(profile, results)
        results["floor"] = await asyncio.to_thread(measure_floor, profile.n * 3, profile.warmup)
        results["floor_throughput"] = await asyncio.to_thread(measure_floor_throughput, profile.throughput_seconds)
        results["ceiling_throughput"] = await asyncio.to_thread(measure_ceiling, profile.throughput_seconds)
        results["ceiling_serial"] = await asyncio.to_thread(measure_ceiling, profile.throughput_seconds, 1)
    if "sweep" in only:
        await sweep(profile, results)
    if "cold" in only:
        await cold_start(results)
    if "sim" in only:
        await simulated(profile, results)
    results["total_runtime_s"] = round(time.monotonic() - started, 1)
    original = json.loads(Path(args.compare).read_text()) if args.compare else None
    report(results, original)
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.output) if args.output else RESULTS / "latest.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out} (total {results['total_runtime_s']} s)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer guilds and calls: under a minute")
    parser.add_argument("--compare", metavar="FILE", help="a result file of the original's harness (node-dch run.sh)")
    parser.add_argument("--only", metavar="SECTIONS", help=f"comma-separated, of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--output", metavar="FILE", help="where to write the results (default results/latest.json)")
    return zmqcross.run(run(parser.parse_args()))  # the bridge side on uvloop, as `zmqcross bridge` runs


if __name__ == "__main__":
    sys.exit(main())
