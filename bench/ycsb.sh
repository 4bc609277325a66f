#!/usr/bin/env bash
# The recorded YCSB run of docs/benchmarks.md ("Cluster: YCSB"): release builds, a 3-node local
# cluster (RF 3, QUORUM), load RECORDS records, then workloads A, B, C and F closed loop; with
# --peers the same against a Redis Cluster and an etcd cluster (bench/peers.sh). One summary
# line per phase on stdout; the full JSON reports and the progress lines stay in the output
# directory.
#
#   bench/ycsb.sh [--peers] [--records N] [--ops N] [--threads N] [--inflight N] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

peers=false records=100000 ops=100000 threads=2 inflight=128 out=""
while [ $# -gt 0 ]; do
    case $1 in
        --peers) peers=true ;;
        --records) records=$2; shift ;;
        --ops) ops=$2; shift ;;
        --threads) threads=$2; shift ;;
        --inflight) inflight=$2; shift ;;
        --out) out=$2; shift ;;
        -h | --help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-$(mktemp -d -t kv-ycsb.XXXXXX)}
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-target}
features=()
$peers && features=(--features bench-peers)
cargo build --release --locked -p node --bin kv-node -p cli --bin kvctl "${features[@]}"
kvctl=$target/release/kvctl

summary() { # name json
    python3 - "$1" "$2" <<'PY'
import json, sys
name, path = sys.argv[1:]
for p in json.load(open(path))["phases"]:
    ops = " ".join(f"{k} p50 {v['p50_us']}us p99 {v['p99_us']}us p99.9 {v['p999_us']}us"
                   for k, v in p["operations"].items())
    errors = sum(p["errors"].values())
    print(f"{name} {p['phase']}: {p['ops_per_sec']:.0f} ops/s, {errors} errors; {ops}")
PY
}

run_all() { # target, extra bench args...
    local t=$1; shift
    "$kvctl" bench "$@" --target "$t" --records "$records" --threads "$threads" \
        --inflight "$inflight" --phase load -o json >"$out/$t-load.json"
    summary "$t" "$out/$t-load.json"
    for w in a b c f; do
        "$kvctl" bench "$@" --target "$t" --workload "$w" --records "$records" --ops "$ops" \
            --threads "$threads" --inflight "$inflight" --phase run -o json >"$out/$t-$w.json"
        summary "$t $w" "$out/$t-$w.json"
    done
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
cluster=$out/cluster
"$kvctl" local up --dir "$cluster" --dcs 1 --nodes-per-dc 3 --kv-node "$target/release/kv-node" >/dev/null
trap '"$kvctl" --dir "$cluster" local down >/dev/null 2>&1 || true' EXIT
run_all kv --dir "$cluster" --cl QUORUM 2>>"$out/progress.log"
"$kvctl" --dir "$cluster" local down >/dev/null
trap - EXIT

if $peers; then
    bench/peers.sh up >/dev/null
    trap 'bench/peers.sh down >/dev/null' EXIT
    run_all redis 2>>"$out/progress.log"
    run_all etcd 2>>"$out/progress.log"
fi
echo "reports in $out"
