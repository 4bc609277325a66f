#!/usr/bin/env bash
# The recorded YCSB run of docs/benchmarks.md ("Cluster: YCSB"): release builds, a 3-node local
# cluster (RF 3, QUORUM; with --dcs 2, 2 DCs x 3 nodes, RF 3 per DC, LOCAL_QUORUM), load RECORDS
# records, then workloads A, B, C and F closed loop; with
# --peers the same against a Redis Cluster and an etcd cluster (bench/peers.sh). One summary
# line per phase on stdout; the full JSON reports and the progress lines stay in the output
# directory.
#
#   bench/ycsb.sh [--peers] [--dcs 1|2] [--records N] [--ops N] [--threads N] [--inflight N]
#                 [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

peers=false dcs=1 records=100000 ops=100000 threads=2 inflight=128 out=""
while [ $# -gt 0 ]; do
    case $1 in
        --peers) peers=true ;;
        --dcs) dcs=$2; shift ;;
        --records) records=$2; shift ;;
        --ops) ops=$2; shift ;;
        --threads) threads=$2; shift ;;
        --inflight) inflight=$2; shift ;;
        --out) out=$2; shift ;;
        -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-$(mktemp -d -t kv-ycsb.XXXXXX)}
mkdir -p "$out"
features=()
if $peers; then
    features=(--features bench-peers)
    bench/peers.sh install # protoc, which etcd-client's build needs, before the build
fi
build_release "${features[@]}"

summary() { # name json ticks-before ticks-after
    python3 - "$@" "$(getconf CLK_TCK)" <<'PY'
import json, sys
name, path, before, after, hz = sys.argv[1:]
for p in json.load(open(path))["phases"]:
    ops = " ".join(f"{k} p50 {v['p50_us']}us p99 {v['p99_us']}us p99.9 {v['p999_us']}us"
                   for k, v in p["operations"].items())
    errors = sum(p["errors"].values())
    cpu = (int(after) - int(before)) / int(hz) * 1e6 / p["ops"]
    print(f"{name} {p['phase']}: {p['ops_per_sec']:.0f} ops/s, {errors} errors, "
          f"servers' CPU {cpu:.0f} us/op; {ops}")
PY
}

one() { # name, json out, servers pattern, bench args...
    local name=$1 json=$2 servers=$3; shift 3
    local before
    before=$(server_ticks "$servers")
    "$kvctl" bench "$@" -o json >"$json"
    summary "$name" "$json" "$before" "$(server_ticks "$servers")"
}

run_all() { # target, servers pattern, extra bench args...
    local t=$1 servers=$2; shift 2
    local common=(--target "$t" --records "$records" --threads "$threads" --inflight "$inflight")
    one "$t" "$out/$t-load.json" "$servers" "$@" "${common[@]}" --phase load
    for w in a b c f; do
        one "$t $w" "$out/$t-$w.json" "$servers" "$@" "${common[@]}" --workload "$w" \
            --ops "$ops" --phase run
    done
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
cluster=$out/cluster
warm_memory
"$kvctl" local up --dir "$cluster" --dcs "$dcs" --nodes-per-dc 3 "${bench_node_settings[@]}" \
    --kv-node "$target/release/kv-node" >/dev/null
trap '"$kvctl" --dir "$cluster" local down >/dev/null 2>&1 || true' EXIT
level=QUORUM
[ "$dcs" -gt 1 ] && level=LOCAL_QUORUM
run_all kv "kv-node.*$cluster/" --dir "$cluster" --cl "$level" 2>>"$out/progress.log"
"$kvctl" --dir "$cluster" local down >/dev/null
trap - EXIT

if $peers; then
    warm_memory
    bench/peers.sh up >/dev/null
    trap 'bench/peers.sh down >/dev/null' EXIT
    run_all redis "redis-server" 2>>"$out/progress.log"
    run_all etcd "^etcd --name" 2>>"$out/progress.log"
fi
echo "reports in $out"
