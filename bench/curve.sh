#!/usr/bin/env bash
# The latency-versus-throughput curve of docs/benchmarks.md: for each store, load RECORDS
# records, find YCSB-A's closed-loop peak, then run open loop (--rate) at 25, 50, 75 and 90% of
# that peak for SECONDS each, and plot p50 and p99 against the throughput achieved to
# docs/ycsb-a-latency.png (matplotlib goes into a venv under the target dir).
#
#   bench/curve.sh [--peers] [--records N] [--seconds S] [--out DIR] [--png FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

peers=false records=100000 seconds=10 out="" png=docs/ycsb-a-latency.png
while [ $# -gt 0 ]; do
    case $1 in
        --peers) peers=true ;;
        --records) records=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --out) out=$2; shift ;;
        --png) png=$2; shift ;;
        -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-$(mktemp -d -t kv-curve.XXXXXX)}
mkdir -p "$out"
features=()
if $peers; then
    features=(--features bench-peers)
    bench/peers.sh install # protoc, which etcd-client's build needs, before the build
fi
build_release "${features[@]}"

venv=$target/bench-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet matplotlib
fi

field() { # json-file python-expression-on-d
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

settle() { # store: ours waits for the compactions earlier phases left, so no point pays for them
    if [ "$1" = ours ]; then wait_for_compactions "$cluster"; fi
}

curve() { # store, bench args...
    local s=$1; shift
    local common=(--workload a --records "$records" --threads 2 -o json "$@")
    "$kvctl" bench "${common[@]}" --phase load --inflight 128 >"$out/$s-load.json"
    settle "$s"
    # The peak is held as long as each open-loop point, so it pays for the flushes and
    # compactions it causes, as they will: a fixed count of operations (3x the records) lasted
    # 5 s at 62k ops/s, before the compaction it caused, and 50% of that was not sustainable.
    # A first run of RECORDS operations estimates the rate for the count.
    "$kvctl" bench "${common[@]}" --phase run --inflight 128 --ops "$records" >"$out/$s-probe.json"
    local peak
    peak=$(field "$out/$s-probe.json" 'int(d["phases"][-1]["ops_per_sec"])')
    "$kvctl" bench "${common[@]}" --phase run --inflight 128 --ops $((peak * seconds)) >"$out/$s-peak.json"
    peak=$(field "$out/$s-peak.json" 'int(d["phases"][-1]["ops_per_sec"])')
    echo "$s: closed-loop peak $peak ops/s"
    for pct in 25 50 75 90; do
        local rate=$((peak * pct / 100))
        settle "$s"
        "$kvctl" bench "${common[@]}" --phase run --inflight 1024 --rate "$rate" \
            --ops $((rate * seconds)) >"$out/$s-rate$pct.json"
        echo "$s at $pct% ($rate ops/s): $(field "$out/$s-rate$pct.json" \
            '" ".join("%s p50 %.2f p99 %.2f ms" % (k, v["p50_us"] / 1000, v["p99_us"] / 1000) for k, v in d["phases"][-1]["operations"].items())')"
    done
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
cluster=$out/cluster
warm_memory
"$kvctl" local up --dir "$cluster" --dcs 1 --nodes-per-dc 3 --kv-node "$target/release/kv-node" \
    "${bench_node_settings[@]}" >/dev/null
trap '"$kvctl" --dir "$cluster" local down >/dev/null 2>&1 || true' EXIT
curve ours --target kv --dir "$cluster" --cl QUORUM 2>>"$out/progress.log"
"$kvctl" --dir "$cluster" local down >/dev/null
trap - EXIT

if $peers; then
    warm_memory
    bench/peers.sh up >/dev/null
    trap 'bench/peers.sh down >/dev/null' EXIT
    curve redis --target redis 2>>"$out/progress.log"
    curve etcd --target etcd 2>>"$out/progress.log"
fi
"$venv/bin/python" bench/plot.py "$png" "$out"/*-rate*.json
echo "plot in $png, reports in $out"
