#!/usr/bin/env python3
"""Where threads' time goes, per second: run time and time waiting for a core (runqueue wait,
from /proc/PID/task/TID/schedstat) per process and thread name, sampled every INTERVAL.

  bench/schedstat.py record OUT INTERVAL LABEL=PID...   until every PID has exited
  bench/schedstat.py report OUT [PROGRESS]              per second, run/wait ms per thread
                                                         class; with a `kvctl bench` progress
                                                         log, each second's slowest operation

Threads are grouped by process label and thread name without its digits (`kv-node` is a node's
request thread, `lsm-flush`, `lsm-compact`, `wal-syncer`; kvctl's are `tokio-rt-worker`). The
sampler reads two small files per thread per interval: at 50 ms for four processes it costs a
few percent of a core. docs/benchmarks.md ("The block cache at the design document's 1 GiB")
has what it showed at half of peak.
"""
import collections
import json
import os
import re
import sys
import time


def record(out, interval, procs):
    prev = {}
    with open(out, "w") as f:
        while True:
            started = time.time()
            sums, alive = {}, False
            for label, pid in procs.items():
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                except FileNotFoundError:
                    continue
                alive = True
                for tid in tids:
                    try:
                        stat = open(f"/proc/{pid}/task/{tid}/stat").read()
                        run, wait = map(int, open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[:2])
                    except (FileNotFoundError, ProcessLookupError):
                        continue
                    name = stat[stat.index("(") + 1:stat.rindex(")")].rstrip("0123456789-_ ")
                    before = prev.get((label, tid))
                    prev[(label, tid)] = (run, wait)
                    if before is None:
                        continue
                    s = sums.setdefault(f"{label}:{name}", [0, 0])
                    s[0] += run - before[0]
                    s[1] += wait - before[1]
            if not alive:
                return
            f.write(json.dumps([started, sums]) + "\n")
            f.flush()
            time.sleep(max(0.0, interval - (time.time() - started)))


def report(out, progress=None):
    rows = [json.loads(line) for line in open(out)]
    if not rows:
        sys.exit("no samples")
    start = rows[0][0]
    per = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    for at, sums in rows:
        for key, (run, wait) in sums.items():
            p = per[int(at - start) + 1][key]
            p[0] += run
            p[1] += wait
    slowest = {}
    if progress:
        for line in open(progress):
            m = re.match(r"\[\w+\]\s+(\d+)s .* slowest ([\d.]+) ms", line)
            if m:
                slowest[int(m.group(1))] = m.group(2)
    keys = sorted({k for p in per.values() for k in p})
    busy = [k for k in keys if sum(per[s][k][0] for s in per) > 0.01 * 1e9 * len(per)]
    print("second  slowest  " + "  ".join(busy) + "  (run/wait ms per second)")
    for s in sorted(per):
        cells = "  ".join(f"{per[s][k][0] / 1e6:.0f}/{per[s][k][1] / 1e6:.0f}" for k in busy)
        print(f"{s:6d}  {slowest.get(s, '-'):>7}  {cells}")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "record":
        record(sys.argv[2], float(sys.argv[3]), dict(a.split("=", 1) for a in sys.argv[4:]))
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "report":
        report(*sys.argv[2:])
    else:
        sys.exit(__doc__)
