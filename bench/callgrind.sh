#!/usr/bin/env bash
# Instructions per operation of a 3-node cluster, counted by callgrind, which unlike time does
# not move with the host's load: the same build measures alike on any day, so two builds can
# be compared by one run each where timed A/Bs on this VM need many. For each configuration
# (`default`, or `kv-node=PATH` for another build), three nodes run under
# `valgrind --tool=callgrind` (about 50x slower), RECORDS records are loaded, the nodes' idle
# instructions per second (gossip, timers) are counted for IDLE seconds, then REPS runs of
# OPS YCSB operations at INFLIGHT outstanding each count the nodes' instructions, net of idle.
# INFLIGHT 1 is the unbatched case that moderate rates approach: one operation per message.
# User space only; the kernel's share (loopback TCP, wake-ups) is not counted. Writes each
# run's inclusive profile of the first node to DIR/cN-rR.top (`callgrind_annotate`).
#
#   bench/callgrind.sh [--workload a..f] [--records N] [--ops N] [--inflight N] [--reps N]
#                      [--idle S] [--out DIR] CONFIG...
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

workload=a records=2000 ops=3000 inflight=1 reps=3 idle=5 out=""
configs=()
while [ $# -gt 0 ]; do
    case $1 in
        --workload) workload=$2; shift ;;
        --records) records=$2; shift ;;
        --ops) ops=$2; shift ;;
        --inflight) inflight=$2; shift ;;
        --reps) reps=$2; shift ;;
        --idle) idle=$2; shift ;;
        --out) out=$2; shift ;;
        -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown flag $1" >&2; exit 2 ;;
        *) configs+=("$1") ;;
    esac
    shift
done
if [ ${#configs[@]} -eq 0 ]; then
    echo "name at least one configuration (default, or kv-node=PATH)" >&2
    exit 2
fi
if ! command -v callgrind_control >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
out=${out:-$(mktemp -d -t kv-callgrind.XXXXXX)}
mkdir -p "$out"
build_release

# Sums the instruction counts of each node's newest dump.
newest_total() { # dir
    local total=0 pid n
    for pid in $(pgrep -f "valgrind.*kv-node.*$1" || true); do
        n=$(find "$1" -maxdepth 1 -name "callgrind.$pid.*" | sed 's/.*\.//' | sort -n | tail -1)
        total=$((total + $(sed -n 's/^summary: //p' "$1/callgrind.$pid.$n")))
    done
    echo $total
}

# Zeroes (z) or dumps (d) every node's counters.
control() { # dir, z|d
    local pid
    for pid in $(pgrep -f "valgrind.*kv-node.*$1"); do
        callgrind_control "-$2" "$pid" >/dev/null 2>&1
    done
}

echo "machine: $(nproc) cores, $(date -u +%FT%TZ), $(git rev-parse --short HEAD)"
i=0
for config in "${configs[@]}"; do
    i=$((i + 1))
    bin=$PWD/$target/release/kv-node
    case $config in
        default) ;;
        kv-node=*) bin=$(realpath "${config#kv-node=}") ;;
        *) echo "unknown configuration $config" >&2; exit 2 ;;
    esac
    dir=$out/c$i
    mkdir -p "$dir"
    wrapper=$dir/kv-node
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/callgrind.%%p %s "$@"\n' \
        "$dir" "$bin" >"$wrapper"
    chmod +x "$wrapper"
    trap '$kvctl --dir "$dir/cluster" local down >/dev/null 2>&1 || true' EXIT
    # Without the bench's heap prefault: under valgrind touching 1.4 GiB takes about a minute
    # per node, longer than `local up` waits, and it changes no instruction count.
    $kvctl local up --dir "$dir/cluster" --dcs 1 --nodes-per-dc 3 --kv-node "$wrapper" \
        "${bench_node_settings[@]}" --set 'memory_prefault_bytes="0B"' >"$dir/up.log"
    common=(--workload "$workload" --records "$records" -o json --target kv --dir "$dir/cluster"
        --cl QUORUM --threads 1)
    $kvctl bench "${common[@]}" --phase load --inflight 16 >"$dir/load.json" 2>/dev/null
    control "$dir" z
    sleep "$idle"
    control "$dir" d
    idle_per_sec=$(($(newest_total "$dir") / idle))
    for rep in $(seq "$reps"); do
        control "$dir" z
        $kvctl bench "${common[@]}" --phase run --inflight "$inflight" --ops "$ops" \
            >"$dir/r$rep.json" 2>/dev/null
        control "$dir" d
        python3 - "$dir/r$rep.json" "$(newest_total "$dir")" "$idle_per_sec" "$config" "$rep" <<'PY'
import json, sys
report, total, idle_per_sec, label, rep = sys.argv[1:]
phase = json.load(open(report))["phases"][-1]
net = int(total) - int(idle_per_sec) * phase["seconds"]
print(f"[{label}] run {rep}: {phase['ops']} ops in {phase['seconds']:.1f} s, "
      f"{int(total) / phase['ops'] / 1e3:.1f}k instructions per op, "
      f"{net / phase['ops'] / 1e3:.1f}k net of idle ({int(idle_per_sec) / 1e6:.1f}M/s)")
PY
        first=$(pgrep -f "valgrind.*kv-node.*$dir" | head -1)
        n=$(find "$dir" -maxdepth 1 -name "callgrind.$first.*" | sed 's/.*\.//' | sort -n | tail -1)
        callgrind_annotate --inclusive=yes "$dir/callgrind.$first.$n" >"$out/c$i-r$rep.top" 2>/dev/null
    done
    $kvctl --dir "$dir/cluster" local down >/dev/null
done
echo "reports in $out"
