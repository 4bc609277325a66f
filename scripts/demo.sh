#!/usr/bin/env bash
# The README's main command: builds kv-node and kvctl in release, then runs `kvctl demo`: a
# 3-DC x 3-node cluster on this machine's loopback addresses, a short workload at LOCAL_QUORUM,
# EACH_QUORUM and QUORUM, and the cluster left running until Ctrl-C. See docs/local-clusters.md.
#
#   scripts/demo.sh                       simulated 40 ms between DCs, cluster in a temp dir
#   scripts/demo.sh --wan-latency 100ms   another latency between DCs
#   scripts/demo.sh --dir /tmp/kv --keep  a directory of your own, kept afterwards
#   scripts/demo.sh --help                every flag
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p node --bin kv-node -p cli --bin kvctl
exec target/release/kvctl demo "$@"
