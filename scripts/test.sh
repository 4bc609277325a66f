#!/usr/bin/env bash
# The whole test suite, as the README gives it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
# Fault-injection tests arm process-wide fail points, so they run in their own test binaries.
cargo test --locked -p node --features failpoints --test failpoints --test sstable --test wal
