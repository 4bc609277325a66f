#!/usr/bin/env bash
# How cost grows (docs/benchmarks.md "How cost grows"): YCSB-A at QUORUM, closed loop,
#  - nodes: 3, 6 and 9 nodes on this machine (RF 3), CPU per operation summed over the nodes;
#  - records: 100k, 1M and 10M records of VALUE_SIZE bytes on 3 nodes, throughput and p99.
# CPU is read from /proc for every kv-node of the cluster around the run phase. Each node gets
# the bench settings (bench/lib.sh), so 9 nodes touch 13 GiB of heap at start.
#
#   bench/scale.sh [nodes|records|all] [--value-size BYTES] [--ops N] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

what=all value_size=100 ops=200000 out=""
while [ $# -gt 0 ]; do
    case $1 in
        nodes | records | all) what=$1 ;;
        --value-size) value_size=$2; shift ;;
        --ops) ops=$2; shift ;;
        --out) out=$2; shift ;;
        -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-$(mktemp -d -t kv-scale.XXXXXX)}
mkdir -p "$out"
build_release

one() { # name, nodes, records
    local name=$1 nodes=$2 records=$3 dir=$out/$1
    warm_memory
    "$kvctl" local up --dir "$dir" --dcs 1 --nodes-per-dc "$nodes" "${bench_node_settings[@]}" \
        --kv-node "$target/release/kv-node" >/dev/null
    trap '"$kvctl" --dir "'"$dir"'" local down >/dev/null 2>&1 || true' EXIT
    local common=(--dir "$dir" --workload a --records "$records" --value-size "$value_size"
        --cl QUORUM --threads 2 --inflight 128 -o json)
    "$kvctl" bench "${common[@]}" --phase load >"$out/$name-load.json" 2>>"$out/progress.log"
    local before after
    before=$(server_ticks "kv-node.*$dir/")
    "$kvctl" bench "${common[@]}" --phase run --ops "$ops" >"$out/$name-run.json" \
        2>>"$out/progress.log"
    after=$(server_ticks "kv-node.*$dir/")
    local disk
    disk=$(du -sm "$dir" | cut -f1)
    python3 - "$name" "$out/$name-run.json" "$before" "$after" "$(getconf CLK_TCK)" \
        "$nodes" "$disk" <<'PY'
import json, sys
name, path, before, after, hz, nodes, disk = sys.argv[1:]
phase = json.load(open(path))["phases"][-1]
cpu_us = (int(after) - int(before)) / int(hz) * 1e6 / phase["ops"]
ops = phase["operations"]
p99 = " ".join(f"{k} p50 {v['p50_us']/1000:.2f} p99 {v['p99_us']/1000:.2f} ms" for k, v in ops.items())
errors = sum(phase["errors"].values())
print(f"{name}: {nodes} nodes, {phase['ops_per_sec']:.0f} ops/s, {errors} errors, "
      f"nodes' CPU {cpu_us:.0f} us/op ({cpu_us/int(nodes):.0f} per node), {disk} MB on disk; {p99}")
PY
    "$kvctl" --dir "$dir" local down >/dev/null
    rm -rf "$dir"
    trap - EXIT
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
if [ "$what" != records ]; then
    for n in 3 6 9; do one "nodes$n" "$n" 100000; done
fi
if [ "$what" != nodes ]; then
    for r in 100000 1000000 10000000; do one "records$r" 3 "$r"; done
fi
echo "reports in $out"
