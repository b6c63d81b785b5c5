"""Run the p2pd benchmarks and the raw-pyzmq baseline in one go; print each figure with its ratio.

    python -m bench            # quick: about 2 minutes
    python -m bench --full     # the issue's sizes (200,000 direct messages, ...): a few minutes
    python -m bench --docs     # also write docs/bench-*.svg and docs/bench-results.json
    python -m bench --scale [--scale-nodes 40,100,200] [--docs]
                               # the overlay at scale (issue 15, bench/scale.py): docs/scale-*.svg, docs/scale-results.json

Loopback only.  Machines are noisy: compare p2pd with the baseline of the
same run (the ratio column), not with figures from another day.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SIZES = {
    "quick": {"direct": 30_000, "raw_acked": 50_000, "ping": 1_000, "raw_ping": 2_000, "broadcast": 10_000, "raw_fanout": 20_000,
              "discovery": [10, 20, 40], "failure_nodes": 5, "footprint_peers": 10, "sends": 10},
    "full": {"direct": 200_000, "raw_acked": 200_000, "ping": 5_000, "raw_ping": 10_000, "broadcast": 50_000, "raw_fanout": 100_000,
             "discovery": [10, 20, 40], "discovery_insecure": 40, "failure_nodes": 10, "footprint_peers": 16, "sends": 20},
}


def machine() -> dict:
    import zmq

    return {"os": f"{platform.system()} {platform.machine()}", "cores": os.cpu_count(), "python": platform.python_version(),
            "interpreter": sys.executable,
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def step(results: dict, errors: list, name: str, fn, *args, **kwargs):
    t = time.perf_counter()
    print(f"  {name} ...", end="", flush=True)
    try:
        results[name] = fn(*args, **kwargs)
        print(f" {time.perf_counter() - t:.1f}s", flush=True)
    except Exception as e:  # report and go on: one broken workload should not hide the others
        print(f" FAILED: {e}", flush=True)
        errors.append(f"{name}: {traceback.format_exc()}")
        results[name] = None


def paired(r: dict, errors: list, rounds: int, raw_name: str, raw_call, name: str, call, ratio) -> None:
    """Run the baseline and the p2pd workload back to back ``rounds`` times; keep the round whose
    ratio is the median (a noisy neighbour then spoils one round, not the figure)."""
    runs = []
    for i in range(rounds):
        got: dict = {}
        step(got, errors, f"{raw_name} (round {i + 1})", raw_call)
        step(got, errors, f"{name} (round {i + 1})", call)
        base, mine = got[f"{raw_name} (round {i + 1})"], got[f"{name} (round {i + 1})"]
        if base is not None and mine is not None:
            runs.append((ratio(mine, base), base, mine))
    if runs:
        runs.sort(key=lambda x: x[0])
        _, r[raw_name], r[name] = runs[len(runs) // 2]
        r.setdefault("ratios", {})[name] = [round(x[0], 3) for x in runs]


def measure(size: dict, rounds: int) -> tuple[dict, list]:
    from bench import raw, workloads as w

    r: dict = {}
    errors: list = []
    print(f"each p2pd workload next to its raw-pyzmq baseline (separate processes, loopback TCP), {rounds} rounds:", flush=True)
    paired(r, errors, rounds, "raw_acked_json", lambda: raw.run_acked(size["raw_acked"], 1000, "json"),
           "direct", lambda: w.direct(size["direct"]), lambda mine, base: mine["rate"] / base)
    step(r, errors, "raw_acked_orjson", raw.run_acked, size["raw_acked"], 1000, "orjson")
    paired(r, errors, rounds, "raw_pingpong_json", lambda: raw.run_pingpong(size["raw_ping"], "json"),
           "ping", lambda: w.ping(size["ping"]), lambda mine, base: mine["p50_us"] / sorted(base)[len(base) // 2])
    paired(r, errors, rounds, "raw_fanout_json", lambda: raw.run_fanout(size["raw_fanout"], 10, "json"),
           "broadcast", lambda: w.broadcast(size["broadcast"], 10), lambda mine, base: mine["delivered_rate"] / base)
    step(r, errors, "raw_idle_rss", raw.idle_rss, "json")
    print("p2pd alone (default settings, CURVE on):", flush=True)
    r["discovery"] = {}
    for n in size["discovery"]:
        if n != max(size["discovery"]):
            step(r["discovery"], errors, n, w.discovery, n)
            continue
        # The size with a goal: one run varies by a second on a loaded 2-core machine (40 daemons
        # forming at once), so the median of the rounds is kept, as for the compared workloads.
        got: dict = {}
        for i in range(rounds):
            step(got, errors, f"{n} (round {i + 1})", w.discovery, n)
        runs = sorted((v for v in got.values() if v), key=lambda v: v["seconds"])
        if runs:
            r["discovery"][n] = runs[len(runs) // 2]
            r["discovery_rounds"] = {n: [round(v["seconds"], 2) for v in runs]}
    if size.get("discovery_insecure"):  # how much of it is CURVE: the same with plaintext links
        step(r, errors, "discovery_insecure", w.discovery, size["discovery_insecure"], "--insecure")
    step(r, errors, "failure", w.failure_detection, size["failure_nodes"])
    step(r, errors, "footprint", w.footprint, size["footprint_peers"], size["sends"])
    return r, errors


def table(r: dict) -> list[tuple[str, str, str, str, str]]:
    """Rows of (workload, p2pd, baseline, ratio, goal with verdict)."""
    rows = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    d, acked = r.get("direct"), r.get("raw_acked_json")
    if d and acked:
        ratio = d["rate"] / acked
        rows.append((f"direct, {d['msgs']:,} msgs, stored+acked", f"{d['rate']:,.0f} msg/s", f"{acked:,.0f} msg/s",
                     f"{ratio:.0%}", f">= 50%: {verdict(ratio >= 0.5)}; lost {d['lost']}, dup {d['duplicated']}"))
    if r.get("raw_acked_orjson") and d:
        rows.append(("  (baseline with orjson)", "", f"{r['raw_acked_orjson']:,.0f} msg/s", f"{d['rate'] / r['raw_acked_orjson']:.0%}", ""))
    p, pp = r.get("ping"), r.get("raw_pingpong_json")
    if p and pp:
        from bench.workloads import percentile

        raw50 = percentile(pp, 0.5)
        ratio = p["p50_us"] / raw50
        rows.append(("ping round trip p50", f"{p['p50_us']:,.0f} us", f"{raw50:,.0f} us", f"{ratio:.2f}x", f"<= 2x: {verdict(ratio <= 2)}"))
        rows.append(("ping round trip p99 / p999", f"{p['p99_us']:,.0f} / {p['p999_us']:,.0f} us",
                     f"{percentile(pp, 0.99):,.0f} / {percentile(pp, 0.999):,.0f} us", "", ""))
    b, fan = r.get("broadcast"), r.get("raw_fanout_json")
    if b and fan:
        ratio = b["delivered_rate"] / fan
        rows.append((f"broadcast to {b['receivers']}, {b['broadcasts']:,} msgs", f"{b['delivered_rate']:,.0f} deliv/s", f"{fan:,.0f} deliv/s",
                     f"{ratio:.0%}", f">= 25%: {verdict(ratio >= 0.25)}; lost {b['lost']}, dup {b['duplicated']}"))
    for n, disc in sorted((r.get("discovery") or {}).items()):
        if disc:
            goal = f"<= 3 s: {verdict(disc['seconds'] <= 3)}" if n == 40 else ""
            rows.append((f"discovery, chain of {n}: all listed", f"{disc['seconds']:.2f} s", "", "", goal))
            rows.append(("  ... all listed alive", f"{disc['alive_s']:.2f} s", "", "", ""))
    di = r.get("discovery_insecure")
    if di:
        rows.append((f"  (chain of {di['nodes']}, --insecure)", f"{di['seconds']:.2f} / {di['alive_s']:.2f} s", "", "", "listed / linked"))
    f = r.get("failure")
    if f:
        rows.append((f"failure detection, {f['nodes']} nodes", f"{f['first_s']:.2f}-{f['last_s']:.2f} s", f"timeout {f['timeout_s']:g} s",
                     f"{f['last_s'] / f['timeout_s']:.2f}x", ""))
    fp = r.get("footprint")
    if fp:
        raw_rss = r.get("raw_idle_rss")
        rows.append(("idle RSS of a daemon", f"{fp['idle_rss_mib']:.1f} MiB", f"{raw_rss / 2**20:.1f} MiB" if raw_rss else "",
                     "", f"<= 30 MiB: {verdict(fp['idle_rss_mib'] <= 30)}"))
        rows.append((f"extra RSS per linked peer ({fp['peers']})", f"{fp['per_peer_kib']:.0f} KiB", "", "", ""))
        rows.append(("p2pctl send, wall time median", f"{fp['send_wall_ms_p50']:.0f} ms", "", "", f"<= 150 ms: {verdict(fp['send_wall_ms_p50'] <= 150)}"))
    return rows


def print_table(rows: list) -> None:
    head = ("workload", "p2pd", "raw pyzmq (same run)", "ratio", "goal")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(5)]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def write_docs(r: dict, info: dict, out: Path) -> None:
    from bench import svgplot

    out.mkdir(parents=True, exist_ok=True)
    bars = []
    if r.get("raw_acked_json"):
        bars.append(("raw pyzmq\n+ json", r["raw_acked_json"]))
    if r.get("raw_acked_orjson"):
        bars.append(("raw pyzmq\n+ orjson", r["raw_acked_orjson"]))
    if r.get("direct"):
        bars.append(("p2pd direct\n(stored, acked)", r["direct"]["rate"]))
    bars.append(("Pyre whisper\n(reference*)", 6295))
    (out / "bench-throughput.svg").write_text(svgplot.bars(
        f"Acknowledged messages/s, window 1,000 ({info['cores']} cores, loopback)", "messages per second", bars))
    disc = {n: v["seconds"] for n, v in (r.get("discovery") or {}).items() if v}
    if disc:
        alive = {n: v["alive_s"] for n, v in (r.get("discovery") or {}).items() if v}
        (out / "bench-discovery.svg").write_text(svgplot.lines(
            "Discovery: a chain of N nodes until each lists all others", "nodes (N)", "seconds",
            {"all listed": [(float(n), s) for n, s in disc.items()], "all linked both ways": [(float(n), s) for n, s in alive.items()]},
            goal=("goal: 3 s at N = 40", 3.0)))
    summary = {k: v for k, v in r.items() if k != "raw_pingpong_json"}
    if r.get("raw_pingpong_json"):
        from bench.workloads import percentile

        pp = r["raw_pingpong_json"]
        summary["raw_pingpong_json"] = {q: percentile(pp, v) for q, v in (("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999))}
    (out / "bench-results.json").write_text(json.dumps({"machine": info, "results": summary}, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the issue's sizes (200,000 direct messages, ...)")
    ap.add_argument("--docs", action="store_true", help="write docs/bench-*.svg and docs/bench-results.json")
    ap.add_argument("--out", type=Path, help="write the charts and results JSON to this directory")
    ap.add_argument("--rounds", type=int, default=3, help="baseline/p2pd pairs per compared workload; the median ratio is kept [3]")
    ap.add_argument("--scale", action="store_true", help="only the scale workload (bench/scale.py): N daemons chain-joined")
    ap.add_argument("--scale-nodes", default="40,100,200", help="network sizes for --scale, comma-separated [40,100,200]")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # the roles run as `python -m bench.raw` and import p2pd from here
    sys.path.insert(0, str(ROOT))
    if args.scale:
        from bench import scale

        out = ROOT / "docs" if args.docs else args.out
        return scale.main([int(x) for x in args.scale_nodes.split(",") if x.strip()], machine(), out)
    mode = "full" if args.full else "quick"
    info = machine()
    print(f"p2pd benchmark ({mode}) - {info['when']} - {info['os']}, {info['cores']} cores, Python {info['python']}, "
          f"pyzmq {info['pyzmq']}, libzmq {info['libzmq']}", flush=True)
    t0 = time.perf_counter()
    results, errors = measure(SIZES[mode], args.rounds)
    print(f"\nall done in {time.perf_counter() - t0:.0f}s\n")
    print_table(table(results))
    for name, ratios in (results.get("ratios") or {}).items():
        print(f"{name}: ratio in each round {', '.join(f'{x:.2f}' for x in ratios)} (the median round is shown)")
    for n, secs in (results.get("discovery_rounds") or {}).items():
        print(f"discovery, chain of {n}: all listed in {', '.join(f'{x:.2f}' for x in secs)} s (the median round is shown)")
    print("\n* Pyre: reference figure from ../shared/reference/baselines.md, not measured in this run.")
    out = ROOT / "docs" if args.docs else args.out
    if out:
        write_docs(results, info, out)
        print(f"charts and results written to {out}")
    for e in errors:
        print(f"\n{e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
