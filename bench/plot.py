"""Plots the open-loop latency-versus-throughput curves bench/curve.sh measured.

    python3 bench/plot.py OUT.png REPORT.json...

Each report is one `kvctl bench -o json` run at a target rate; reports are grouped by store
(their `target` field, or the file name's first dash-separated word). One line per store and
percentile: p50 dashed, p99 solid, latency on a log axis against the rate offered. A run that
achieved less than 95% of its offered rate is drawn with an x: there the load generator or the
store fell behind, and its latency is mostly the backlog.
"""
import json
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def points(paths):
    by_store = defaultdict(list)
    for path in paths:
        report = json.load(open(path))
        store = os.path.basename(path).split("-")[0] or report["target"]
        phase = report["phases"][-1]
        ops = phase["operations"].values()
        count = sum(o["count"] for o in ops)
        # Latency over every operation type, weighted by count (read and update for A).
        p50 = sum(o["p50_us"] * o["count"] for o in ops) / count / 1000
        p99 = max(o["p99_us"] for o in ops) / 1000
        offered = report["rate"]
        behind = phase["ops_per_sec"] < 0.95 * offered
        by_store[store].append((offered, p50, p99, behind))
    return {s: sorted(p) for s, p in by_store.items()}


def main():
    out, paths = sys.argv[1], sys.argv[2:]
    fig, ax = plt.subplots(figsize=(8, 5))
    for store, pts in sorted(points(paths).items()):
        x = [p[0] for p in pts]
        (line,) = ax.plot(x, [p[2] for p in pts], marker="o", label=f"{store} p99")
        ax.plot(x, [p[1] for p in pts], marker=".", linestyle="--", color=line.get_color(),
                label=f"{store} p50")
        behind = [p for p in pts if p[3]]
        ax.scatter([p[0] for p in behind], [p[2] for p in behind], marker="x", s=120,
                   color="black", zorder=3)
    ax.set_xlabel("offered rate (ops/s), open loop at 25/50/75/90% of each store's closed-loop "
                  "peak; x: under 95% achieved")
    ax.set_ylabel("latency from intended send time (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("YCSB-A, 3 nodes on one 2-core machine")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
