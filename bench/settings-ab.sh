#!/usr/bin/env bash
# A/B of node settings by open-loop tail latency: for each configuration given (a `--set`
# assignment for every node, or `default`), in the order given, a fresh 3-node cluster loads
# RECORDS records, runs YCSB-A closed loop (its peak), then REPS open-loop runs at RATE ops/s
# for SECONDS each, each after the compactions earlier runs left. Prints one line per run:
# p50 / p99 / p99.9 / max per operation and the nodes' CPU per operation. Give each
# configuration more than once, interleaved: single runs' p99 vary by 2x and more.
#
#   bench/settings-ab.sh [--rate N] [--seconds S] [--reps N] [--records N] [--memtable SIZE]
#                        [--out DIR] CONFIG...
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rate=22000 seconds=30 reps=2 records=100000 memtable="" out=""
configs=()
while [ $# -gt 0 ]; do
    case $1 in
        --rate) rate=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --reps) reps=$2; shift ;;
        --records) records=$2; shift ;;
        --memtable) memtable=$2; shift ;;
        --out) out=$2; shift ;;
        -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown flag $1" >&2; exit 2 ;;
        *) configs+=("$1") ;;
    esac
    shift
done
if [ ${#configs[@]} -eq 0 ]; then
    echo "name at least one configuration (a --set assignment, or default)" >&2
    exit 2
fi
if [ -n "$memtable" ]; then bench_node_settings=(--set "engine.memtable_bytes=\"$memtable\""); fi
out=${out:-$(mktemp -d -t kv-ab.XXXXXX)}
mkdir -p "$out"
build_release

summary() { # json report, label, nodes' clock ticks
    python3 - "$@" <<'PY'
import json, sys
report, label, ticks = sys.argv[1], sys.argv[2], int(sys.argv[3])
phase = json.load(open(report))["phases"][-1]
ops = sum(o["count"] for o in phase["operations"].values())
lat = " ".join("%s %.2f / %.1f / %.1f / %.1f ms" % (k, o["p50_us"] / 1e3, o["p99_us"] / 1e3,
               o["p999_us"] / 1e3, o["max_us"] / 1e3) for k, o in phase["operations"].items())
print(f"{label}: {phase['ops_per_sec']:.0f} ops/s, {lat}, nodes {ticks * 1e4 / max(ops, 1):.0f} µs/op")
PY
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "p50 / p99 / p99.9 / max per operation"
i=0
for config in "${configs[@]}"; do
    i=$((i + 1))
    cluster=$out/c$i
    settings=()
    if [ "$config" != default ]; then settings=(--set "$config"); fi
    "$kvctl" local up --dir "$cluster" --dcs 1 --nodes-per-dc 3 --kv-node "$target/release/kv-node" \
        "${bench_node_settings[@]}" "${settings[@]}" >/dev/null
    trap '"$kvctl" --dir "$cluster" local down >/dev/null 2>&1 || true' EXIT
    common=(--workload a --records "$records" --threads 2 -o json --target kv --dir "$cluster" --cl QUORUM)
    "$kvctl" bench "${common[@]}" --phase load --inflight 128 >"$out/c$i-load.json" 2>/dev/null
    wait_for_compactions "$cluster"
    "$kvctl" bench "${common[@]}" --phase run --inflight 128 --ops $((records * 3)) \
        >"$out/c$i-peak.json" 2>/dev/null
    echo "[$i] $config: closed-loop peak $(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["phases"][-1]["ops_per_sec"]))' "$out/c$i-peak.json") ops/s"
    for r in $(seq "$reps"); do
        wait_for_compactions "$cluster"
        before=$(server_ticks "kv-node.*$cluster")
        "$kvctl" bench "${common[@]}" --phase run --inflight 1024 --rate "$rate" \
            --ops $((rate * seconds)) >"$out/c$i-r$r.json" 2>"$out/c$i-r$r.log"
        summary "$out/c$i-r$r.json" "[$i] $config run $r" $(($(server_ticks "kv-node.*$cluster") - before))
    done
    "$kvctl" --dir "$cluster" local down >/dev/null
    trap - EXIT
done
echo "reports in $out"
