#!/usr/bin/env bash
# Installs what the tests need and the machine lacks: nft, for the partition tests (they skip
# without it). Idempotent: a no-op when everything is present. Needs root or password-less sudo
# to install; without either it says so and leaves the tests to skip.
set -euo pipefail

missing=()
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "test-deps: missing ${missing[*]}, and not root: the tests that need them will skip" >&2
    exit 0
fi

echo "test-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
