# Shared by the bench/ scripts: `source bench/lib.sh` from the repository root.

# Builds release kv-node and kvctl (with any extra cargo flags, e.g. --features bench-peers)
# and sets $target and $kvctl.
build_release() {
    target=${CARGO_TARGET_DIR:-target}
    cargo build --release --locked -p node --bin kv-node -p cli --bin kvctl "$@"
    kvctl=$target/release/kvctl
}

# User+system clock ticks of the processes whose command line matches the pgrep pattern $1.
server_ticks() {
    local sum=0
    for pid in $(pgrep -f "$1" || true); do
        sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}
