# Shared by the bench/ scripts: `source bench/lib.sh` from the repository root.

# Builds release kv-node and kvctl (with any extra cargo flags, e.g. --features bench-peers)
# and sets $target and $kvctl.
build_release() {
    target=${CARGO_TARGET_DIR:-target}
    cargo build --release --locked -p node --bin kv-node -p cli --bin kvctl "$@"
    kvctl=$target/release/kvctl
}

# Touches up to 4 GiB of fresh memory (half of what is available at most) and frees it: call
# right before starting what is measured. On this VM, memory left free for a minute goes cold:
# its first touch costs about 7 us per 4 KiB page in the kernel (4 GiB took 29 s of system
# time), so the first run after a pause paid for it and runs right after one another did not.
# 2026-12-05, 2 DCs x 3 nodes, 100k inserts after 60 s idle: 9.9k/s at 193 us of the nodes' CPU
# per insert, and 22.6k/s at 80 us in the run right after; 25.6k/s at 68 us after this. 2 GiB
# was not enough (9.4k/s at 206 us): a run touches about 3 GiB with the page cache.
warm_memory() {
    python3 - <<'PY'
for line in open("/proc/meminfo"):
    if line.startswith("MemAvailable:"):
        available = int(line.split()[1]) * 1024
size = min(4 << 30, available // 2)
block = b"\x01" * (64 << 20)
held = [bytearray(block) for _ in range(size // len(block))]
PY
}

# What the bench scripts give `kvctl local up`: the node's own 64 MiB memtables and 1 GiB
# block cache (the design document's defaults), not the 8 MiB and 64 MiB that local clusters
# use to keep many nodes small (8 MiB memtables make every node switch, flush and compact
# eight times as often as a deployed one); and the
# heap a node with those memtables and its 1 GiB block cache touches at start by default
# (docs/configuration.md), which local clusters turn off. A heap that outgrows it faults fresh
# pages in on the request threads: a 256 MiB block cache with 512 MiB touched had open-loop
# p99s of 171-305 ms at 40.8k, and 6.1-9.5 ms with 1 GiB touched.
bench_prefault=(--set 'memory_prefault_bytes="1472MiB"')
bench_block_cache=(--set 'engine.block_cache_bytes="1GiB"')
bench_node_settings=(--set 'engine.memtable_bytes="64MiB"' "${bench_block_cache[@]}" "${bench_prefault[@]}")

# User+system clock ticks of the processes whose command line matches the pgrep pattern $1.
server_ticks() {
    local sum=0
    for pid in $(pgrep -f "$1" || true); do
        sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}

# Waits until every node of the local cluster in directory $1 reports no compaction pending or
# running and no memtable waiting for flush (kv_engine_* on /metrics), at most $2 seconds
# (default 300), so that a measurement does not pay for the debt an earlier phase left.
wait_for_compactions() {
    python3 - "$1" "${2:-300}" <<'PY'
import json, sys, time, urllib.request
cluster, limit = sys.argv[1], float(sys.argv[2])
nodes = json.load(open(f"{cluster}/cluster.json"))["nodes"]
busy = ("kv_engine_compactions_pending", "kv_engine_compactions_running",
        "kv_engine_immutable_memtables")
deadline = time.monotonic() + limit
while True:
    backlog = 0
    for n in nodes:
        text = urllib.request.urlopen(f"http://{n['http_address']}/metrics", timeout=5).read().decode()
        backlog += sum(int(float(line.split()[-1])) for line in text.splitlines()
                       if line.startswith(busy))
    if backlog == 0:
        break
    if time.monotonic() > deadline:
        sys.exit(f"compactions still pending after {limit:.0f} s")
    time.sleep(0.5)
PY
}
