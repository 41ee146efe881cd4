#!/usr/bin/env python3
"""Per-step coordination on a simulated multi-host cluster (issue 21): against the worker count and the
tree's radix, with and without latency between hosts; and the cost of losing a host mid-fit.

    sudo .venv/bin/python scripts/bench_scale.py [--quick] [--json FILE] [--svg FILE]
    (also: scripts/bench.py --only scale)

The cluster is ``tests/_netns.py``'s: 4 "hosts" (network namespaces, one address each) with 1, 1, 1, 1 /
2 ... / 4 workers each for 4 / 8 / 16 workers (2 workers: two hosts of one), the scheduler and this
client on a fifth address, a router delaying every packet between hosts by ``--delay`` (default 0.5 ms
per hop, one way; 0 for "without latency": then a hop costs the router's own time only). Each worker
holds one 100 x 784 float64 chunk; a fit is ``--steps`` gd steps in distributed mode. The coordination of
a step is the driver's wall time of the reduction minus the slowest worker's evaluation (the engine's
``reduce_seconds``), median over the steps after the 10th. The goal (issue 21): at 16 workers,
coordination <= 2 ms + the tree's depth x one round trip between two hosts (measured here, same router).

Needs root (network namespaces, TUN devices); prints why not and returns otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

HOSTS = 4
LAYOUT = {2: (1, 1, 0, 0), 4: (1, 1, 1, 1), 8: (2, 2, 2, 2), 16: (4, 4, 4, 4)}


def tree_depth(n: int, radix: int) -> int:
    """Hops from the root to the deepest worker of the engine's ``radix``-nomial tree over ``n``."""
    from dlogit.engine.placement import knomial_children

    def depth(i: int) -> int:
        return max((1 + depth(c) for c in knomial_children(i, n, radix)), default=0)

    return depth(0)


def _fit(client, X, y, steps: int, radix: int, callback=None):
    import dask

    from dlogit.engine import fit_dask
    from dlogit.events import new_run_id
    from dlogit.spec import FitSpec

    spec = FitSpec(run=new_run_id(), solver="gd", max_iter=steps, tol=0.0, lr=0.1)
    with dask.config.set({"dlogit.engine.tree-radix": radix, "dlogit.engine.replica-every": "0.2s"}):
        t0 = time.perf_counter()
        result = fit_dask(client, X, y, None, spec, callback=callback, mode="distributed")
        return result, time.perf_counter() - t0


def _coordination(result) -> tuple[float, float]:
    t = np.asarray(result.extra["reduce_seconds"])[10:]
    return float(np.median(t[:, 0] - t[:, 1])) * 1e3, float(np.median(t[:, 0])) * 1e3


def _grow(sim, client, n: int) -> None:
    for k, want in enumerate(LAYOUT[n], start=1):
        while len(sim.procs[k]) < want:
            sim.start_worker(k)
    client.wait_for_workers(n, timeout=600)


def _host_loss(sim, client, X, y, n: int, steps: int, radix: int) -> dict:
    """The same fit undisturbed (before and after) and with a host other than the driver's killed
    halfway: the extra wall time, and the time from the kill to the first progress event past the step
    it was at (events come every ``dlogit.monitor.interval``: an upper bound of the stall)."""
    base, base_s = _fit(client, X, y, steps, radix)
    events: list[dict] = []
    out: dict = {}

    def note(e: dict) -> None:
        events.append({**e, "_at": time.monotonic()})

    def run() -> None:
        out["result"], out["seconds"] = _fit(client, X, y, steps, radix, callback=note)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    deadline = time.monotonic() + 300
    while max((s for e in list(events) if e["type"] == "progress" for s in e["step"]), default=-1) < steps // 2:
        if time.monotonic() > deadline or not th.is_alive():
            raise RuntimeError("the host-loss fit made no progress")
        time.sleep(0.005)
    driver = next(e for e in events if e["type"] == "start")["params"]["driver"]
    victim = next(k for k in range(1, HOSTS + 1) if k != sim.host_of_ip(driver) and sim.procs[k])
    lost = len(sim.procs[victim])
    at_step = max(s for e in list(events) if e["type"] == "progress" for s in e["step"])
    killed = time.monotonic()
    sim.kill_host(victim)
    th.join(600)
    stall = min((e["_at"] - killed for e in events if e["type"] == "progress" and e["_at"] > killed
                 and max(e["step"]) > at_step), default=float("nan"))
    _grow(sim, client, n)  # the host again, for the undisturbed fit after
    _, after_s = _fit(client, X, y, steps, radix)
    fits = [base_s, after_s]
    base_s = (base_s + after_s) / 2
    step_ms = float(np.median(np.asarray(base.extra["reduce_seconds"])[10:, 0])) * 1e3
    extra_s = out["seconds"] - base_s
    same = bool(np.array_equal(base.theta, out["result"].theta))
    return {"workers_lost": lost, "undisturbed_fit_s": base_s, "undisturbed_fits_s": fits,
            "stall_s": stall, "disturbed_fit_s": out["seconds"],
            "extra_s": extra_s, "step_ms": step_ms, "extra_in_steps": extra_s * 1e3 / step_ms,
            "bit_identical": same, "warnings": [e["message"] for e in events if e["type"] == "warning"]}


def run(workers: list[int], radixes: list[str], delay: float, steps: int, loss: bool) -> dict:
    import _netns
    from distributed import Client

    from dlogit.data import synthetic

    why = _netns.unavailable()
    if why is not None:
        return {"skipped": why}
    res: dict = {"hosts": HOSTS, "delay_ms": delay * 1e3, "steps": steps,
                 "data": "one 100x784 float64 chunk per worker, gd, distributed mode", "rows": []}
    with _netns.SimCluster(hosts=HOSTS, workers_per_host=0, delay=0.0) as sim, \
            Client(sim.address, set_as_default=False, timeout=60) as client:
        for d in (0.0, delay):
            sim.set_delay(d)
            res[f"rtt_ms_{d * 1e3:g}"] = sim.rtt(1, 2, 400) * 1e3
        for n in workers:
            _grow(sim, client, n)
            X, y = synthetic(100 * n, 784, seed=0, chunk_rows=100)
            sim.set_delay(0.0)
            _fit(client, X, y, 50, 4)  # imports, kernels and links warm
            for radix_name in radixes:
                radix = n if radix_name == "star" else int(radix_name)
                if radix > n and radix_name != "star":
                    continue
                row = {"workers": n, "radix": radix_name, "depth": tree_depth(n, max(2, radix))}
                for d in (0.0, delay):  # interleaved, twice: a burst of load hits both alike
                    vals = []
                    for _ in range(2):
                        sim.set_delay(d)
                        vals.append(_coordination(_fit(client, X, y, steps, max(2, radix))[0]))
                    key = "latency" if d else "no_latency"
                    row[f"{key}_coordination_ms"] = float(np.median([v[0] for v in vals]))
                    row[f"{key}_step_ms"] = float(np.median([v[1] for v in vals]))
                row["latency_over_none"] = row["latency_coordination_ms"] / max(row["no_latency_coordination_ms"],
                                                                               1e-9)
                row["goal_ms"] = 2.0 + row["depth"] * res[f"rtt_ms_{delay * 1e3:g}"]
                res["rows"].append(row)
                print(f"scale: {n:2d} workers, radix {radix_name:>4} (depth {row['depth']}): coordination "
                      f"{row['no_latency_coordination_ms']:.3f} ms without latency, "
                      f"{row['latency_coordination_ms']:.3f} ms at {delay * 1e3:g} ms per hop "
                      f"(x{row['latency_over_none']:.2f}); goal 2 ms + depth x RTT = {row['goal_ms']:.2f} ms",
                      flush=True)
        base = {(r["workers"], r["radix"]): r for r in res["rows"]}
        for r in res["rows"]:
            first = base.get((workers[0], r["radix"])) or base.get((workers[0], "star"))
            if first:
                r["latency_over_smallest"] = r["latency_coordination_ms"] / max(first["latency_coordination_ms"],
                                                                                1e-9)
        top = [r for r in res["rows"] if r["workers"] == max(workers) and r["radix"] == "4"]
        if top:
            res["goal"] = {"workers": max(workers), "radix": 4, "coordination_ms": top[0]["latency_coordination_ms"],
                           "limit_ms": top[0]["goal_ms"],
                           "met": top[0]["latency_coordination_ms"] <= top[0]["goal_ms"]}
        if loss and max(workers) >= 8:
            sim.set_delay(delay)
            n = max(workers)
            X, y = synthetic(100 * n, 784, seed=0, chunk_rows=100)
            res["host_loss"] = h = _host_loss(sim, client, X, y, n, max(steps, 600), 4)
            print(f"scale: losing a host of {h['workers_lost']} workers mid-fit ({n} workers, "
                  f"{delay * 1e3:g} ms per hop): +{h['extra_s']:.2f} s = {h['extra_in_steps']:.0f} steps of "
                  f"{h['step_ms']:.2f} ms (re-attach included; the mean of an undisturbed fit before and after); "
                  f"first progress past the kill's step {h['stall_s']:.2f} s after it; bit-identical: "
                  f"{h['bit_identical']}", flush=True)
    res["router"] = sim.router_report
    res["load_average"] = os.getloadavg()
    return res


# --------------------------------------------------------------------------------------------------
# the plot (SVG by hand: matplotlib is not a dependency)

def svg(res: dict) -> str:
    rows = res["rows"]
    ws = sorted({r["workers"] for r in rows})
    series = []
    colors = {"2": "#1f77b4", "4": "#d62728", "star": "#2ca02c"}
    for radix in ("2", "4", "star"):
        for key, dash in (("no_latency", "4,3"), ("latency", "")):
            pts = [(r["workers"], r[f"{key}_coordination_ms"]) for r in rows if r["radix"] == radix]
            if pts:
                label = f"radix {radix}, " + ("no latency" if key == "no_latency" else
                                              f"{res['delay_ms']:g} ms per hop")
                series.append((label, colors[radix], dash, pts))
    goal = [(r["workers"], r["goal_ms"]) for r in rows if r["radix"] == "4"]
    if goal:
        series.append(("goal, radix 4: 2 ms + depth x RTT", "#555", "1,3", goal))
    ymax = max(y for *_, pts in series for _, y in pts) * 1.1
    W, H, L, R, T, B = 640, 400, 60, 230, 30, 50
    pw, ph = W - L - R, H - T - B
    lx = {w: L + pw * (np.log2(w) - np.log2(ws[0])) / max(1e-9, np.log2(ws[-1]) - np.log2(ws[0])) for w in ws}

    def y_of(v: float) -> float:
        return T + ph * (1 - v / ymax)

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
            'font-size="11">'), f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="18" font-size="13">coordination per step vs workers (4 simulated hosts)</text>',
           f'<line x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}" stroke="black"/>']
    for w in ws:
        out.append(f'<text x="{lx[w]:.1f}" y="{T + ph + 15}" text-anchor="middle">{w}</text>')
    out.append(f'<text x="{L + pw / 2}" y="{H - 12}" text-anchor="middle">workers</text>')
    step = max(0.5, round(ymax / 6 * 2) / 2)
    v = 0.0
    while v <= ymax:
        out.append(f'<text x="{L - 6}" y="{y_of(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        out.append(f'<line x1="{L}" y1="{y_of(v):.1f}" x2="{L + pw}" y2="{y_of(v):.1f}" stroke="#eee"/>')
        v += step
    out.append(f'<text x="16" y="{T + ph / 2}" transform="rotate(-90 16 {T + ph / 2})" '
               'text-anchor="middle">ms per step</text>')
    for i, (label, color, dash, pts) in enumerate(series):
        path = " ".join(f"{lx[x]:.1f},{y_of(y):.1f}" for x, y in pts)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{style}/>')
        for x, y in pts:
            out.append(f'<circle cx="{lx[x]:.1f}" cy="{y_of(y):.1f}" r="2.5" fill="{color}"/>')
        ly = T + 10 + 16 * i
        out.append(f'<line x1="{W - R + 15}" y1="{ly}" x2="{W - R + 40}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2"{style}/>')
        out.append(f'<text x="{W - R + 45}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 and 4 workers, 100 steps (a smoke run)")
    ap.add_argument("--workers", type=int, nargs="*", default=[2, 4, 8, 16], choices=sorted(LAYOUT))
    ap.add_argument("--radix", nargs="*", default=["2", "4", "star"], choices=["2", "4", "star"])
    ap.add_argument("--delay", type=float, default=0.0005, help="seconds per hop between hosts, one way")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--no-loss", action="store_true", help="skip the host-loss fit")
    ap.add_argument("--json", default=None)
    ap.add_argument("--svg", default=None, help="write the scaling curve here")
    args = ap.parse_args(argv)
    workers, steps = ([2, 4], 100) if args.quick else (sorted(args.workers), args.steps)
    res = run(workers, args.radix, args.delay, steps, not args.no_loss)
    if "skipped" in res:
        print(f"scale: skipped ({res['skipped']})", flush=True)
        return res
    if "goal" in res:
        g = res["goal"]
        print(f"scale: goal at {g['workers']} workers (radix 4): {g['coordination_ms']:.3f} ms <= "
              f"{g['limit_ms']:.3f} ms: {'met' if g['met'] else 'NOT met'}", flush=True)
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg(res))
        print(f"wrote {args.svg}")
    if args.json:
        from _benchio import write_json  # scripts/, beside this file

        write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
