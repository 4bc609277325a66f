#!/usr/bin/env bash
# A/B of node settings or builds by open-loop tail latency. For each configuration given, in
# the order given — `--set` assignments for every node (several joined by `;`), `default`, or
# `kv-node=PATH` for another build of the node with default settings (e.g. a copy of
# target/release/kv-node from before a change) — a fresh 3-node cluster loads RECORDS records,
# runs YCSB-A closed loop (its peak), then REPS open-loop runs at RATE ops/s for SECONDS each,
# each after the compactions earlier runs left. Prints the load's and the peak's rate and the
# nodes' CPU per operation in each (CPU per operation at peak moves less from run to run than
# the peak itself), then one line per open-loop run: p50 / p99 / p99.9 / max per operation and
# the nodes' CPU per operation. Give each configuration more than once, interleaved: single
# runs' p99 vary by 2x and more. With --syscalls, each open-loop run also counts the nodes'
# network, WAL and wake-up system calls per operation (perf's syscall tracepoints; needs perf
# and permission to trace). With --events, the nodes log their memtable switches, flushes and
# compactions (`KV_LOG=info,node::lsm=debug`), and each open-loop run also prints its slowest
# seconds with what each node's engine did in them.
#
#   bench/settings-ab.sh [--rate N] [--seconds S] [--reps N] [--records N] [--peak-ops N]
#                        [--memtable SIZE] [--syscalls] [--events] [--out DIR] CONFIG...
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rate=22000 seconds=30 reps=2 records=100000 peak_ops="" memtable="" out="" syscalls="" events=""
configs=()
while [ $# -gt 0 ]; do
    case $1 in
        --rate) rate=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --reps) reps=$2; shift ;;
        --records) records=$2; shift ;;
        --peak-ops) peak_ops=$2; shift ;;
        --memtable) memtable=$2; shift ;;
        --out) out=$2; shift ;;
        --syscalls) syscalls=1 ;;
        --events) events=1 ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown flag $1" >&2; exit 2 ;;
        *) configs+=("$1") ;;
    esac
    shift
done
if [ ${#configs[@]} -eq 0 ]; then
    echo "name at least one configuration (a --set assignment, or default)" >&2
    exit 2
fi
if [ -n "$memtable" ]; then bench_node_settings=(--set "engine.memtable_bytes=\"$memtable\"" "${bench_block_cache[@]}" "${bench_prefault[@]}"); fi
peak_ops=${peak_ops:-$((records * 3))}
out=${out:-$(mktemp -d -t kv-ab.XXXXXX)}
mkdir -p "$out"
build_release

# The system calls --syscalls counts, by tracepoint name.
traced=(writev sendto sendmsg recvfrom recvmsg read epoll_wait futex pwrite64 write fdatasync)

# Counts the traced system calls of the processes matching pgrep pattern $1 into file $2
# until stopped.
count_syscalls() {
    local pids events
    pids=$(pgrep -d, -f "$1")
    events=$(printf 'syscalls:sys_enter_%s,' "${traced[@]}")
    exec perf stat -x, -e "${events%,}" -p "$pids" -o "$2"
}

rate_and_cpu() { # json report, nodes' clock ticks
    python3 - "$@" <<'PY'
import json, sys
phase = json.load(open(sys.argv[1]))["phases"][-1]
print(f"{phase['ops_per_sec']:.0f} ops/s at {int(sys.argv[2]) * 1e4 / max(phase['ops'], 1):.1f} µs/op")
PY
}

summary() { # json report, label, nodes' clock ticks, perf stat output (or none)
    python3 - "$@" <<'PY'
import json, sys
report, label, ticks = sys.argv[1], sys.argv[2], int(sys.argv[3])
perf = sys.argv[4] if len(sys.argv) > 4 else None
phase = json.load(open(report))["phases"][-1]
ops = sum(o["count"] for o in phase["operations"].values())
lat = " ".join("%s %.2f / %.1f / %.1f / %.1f ms" % (k, o["p50_us"] / 1e3, o["p99_us"] / 1e3,
               o["p999_us"] / 1e3, o["max_us"] / 1e3) for k, o in phase["operations"].items())
print(f"{label}: {phase['ops_per_sec']:.0f} ops/s, {lat}, nodes {ticks * 1e4 / max(ops, 1):.0f} µs/op")
if perf:
    counts = {}
    for line in open(perf):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_") and fields[0].isdigit():
            counts[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
    per_op = " ".join(f"{k} {v / max(ops, 1):.2f}" for k, v in counts.items() if v)
    print(f"    syscalls per op (all nodes): {per_op}, total {sum(counts.values()) / max(ops, 1):.2f}")
PY
}

# The SLOWEST_SECONDS seconds of an open-loop run (its progress log $1, started at $2, epoch
# seconds) whose slowest operation was slowest, each with the engine events the nodes of
# cluster directory $3 logged in it.
SLOWEST_SECONDS=4
engine_events() {
    python3 - "$1" "$2" "$3" "$SLOWEST_SECONDS" <<'PY'
import datetime, glob, os, re, sys
progress, start, cluster, shown = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
seconds = []
for line in open(progress):
    m = re.match(r"\[run\]\s+(\d+)s .* slowest ([\d.]+) ms", line)
    if m:
        seconds.append((float(m.group(2)), int(m.group(1))))
events = []
for log in sorted(glob.glob(f"{cluster}/*/node.log")):
    node = os.path.basename(os.path.dirname(log))
    for line in open(log, errors="replace"):
        if not any(k in line for k in ("switched memtables", "flushed a memtable", "compaction done")):
            continue
        if "task=Move" in line:  # a table moved down a level: no data rewritten
            continue
        stamp = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        what = re.sub(r"^\S+\s+\S+\s+\S+\s+", "", line.strip())
        merge = re.search(r"inputs: \[([^]]*)\], output_level: (\d+).*elapsed_ms=(\d+)", what)
        if merge:
            tables = len(merge.group(1).split(","))
            what = f"merged {tables} tables into L{merge.group(2)} in {merge.group(3)} ms"
        events.append((stamp - start, node, what[:90]))
for slowest, second in sorted(seconds, reverse=True)[:shown]:
    print(f"    second {second}: slowest {slowest} ms")
    for at, node, what in sorted(e for e in events if second - 1 <= e[0] < second):
        print(f"      {at:6.2f} s {node}: {what}")
PY
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "p50 / p99 / p99.9 / max per operation"
i=0
for config in "${configs[@]}"; do
    i=$((i + 1))
    cluster=$out/c$i
    settings=() node_bin=$target/release/kv-node
    case $config in
        default) ;;
        kv-node=*) node_bin=${config#kv-node=} ;;
        *) IFS=";" read -ra assignments <<<"$config"; settings=(); for a in "${assignments[@]}"; do settings+=(--set "$a"); done ;;
    esac
    warm_memory
    [ -n "$events" ] && export KV_LOG=info,node::lsm=debug
    "$kvctl" local up --dir "$cluster" --dcs 1 --nodes-per-dc 3 --kv-node "$node_bin" \
        "${bench_node_settings[@]}" "${settings[@]}" >/dev/null
    trap '"$kvctl" --dir "$cluster" local down >/dev/null 2>&1 || true' EXIT
    common=(--workload a --records "$records" --threads 2 -o json --target kv --dir "$cluster" --cl QUORUM)
    before=$(server_ticks "kv-node.*$cluster")
    "$kvctl" bench "${common[@]}" --phase load --inflight 128 >"$out/c$i-load.json" 2>/dev/null
    load=$(rate_and_cpu "$out/c$i-load.json" $(($(server_ticks "kv-node.*$cluster") - before)))
    wait_for_compactions "$cluster"
    before=$(server_ticks "kv-node.*$cluster")
    "$kvctl" bench "${common[@]}" --phase run --inflight 128 --ops "$peak_ops" \
        >"$out/c$i-peak.json" 2>/dev/null
    peak=$(rate_and_cpu "$out/c$i-peak.json" $(($(server_ticks "kv-node.*$cluster") - before)))
    echo "[$i] $config: load $load; closed-loop peak $peak"
    for r in $(seq "$reps"); do
        wait_for_compactions "$cluster"
        before=$(server_ticks "kv-node.*$cluster")
        perf_out=()
        if [ -n "$syscalls" ]; then
            perf_out=("$out/c$i-r$r.syscalls")
            count_syscalls "kv-node.*$cluster" "${perf_out[0]}" &
            perf_pid=$!
        fi
        started=$(date +%s.%N)
        "$kvctl" bench "${common[@]}" --phase run --inflight 1024 --rate "$rate" \
            --ops $((rate * seconds)) >"$out/c$i-r$r.json" 2>"$out/c$i-r$r.log"
        if [ -n "$syscalls" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
        summary "$out/c$i-r$r.json" "[$i] $config run $r" \
            $(($(server_ticks "kv-node.*$cluster") - before)) "${perf_out[@]}"
        if [ -n "$events" ]; then engine_events "$out/c$i-r$r.log" "$started" "$cluster"; fi
    done
    "$kvctl" --dir "$cluster" local down >/dev/null
    trap - EXIT
done
echo "reports in $out"
