#!/usr/bin/env bash
# The peers `kvctl bench --target redis|etcd` compares against, on loopback:
#   a 3-master Redis Cluster on 127.0.0.1:7001-7003 (AOF, appendfsync everysec), and
#   a 3-member etcd cluster, clients on 127.0.0.1:23791-23793.
# Installs redis-server, etcd-server and protobuf-compiler (etcd-client's build needs protoc)
# with apt-get when missing.
#
#   bench/peers.sh install  # only install what is missing (before building with bench-peers)
#   bench/peers.sh up       # start both in $KV_PEERS_DIR (default: a new temp dir, remembered)
#   bench/peers.sh down     # stop them and remove the directory
set -euo pipefail

STATE=${TMPDIR:-/tmp}/kv-bench-peers.dir

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_missing() {
    local want=()
    command -v redis-server >/dev/null || want+=(redis-server)
    command -v redis-cli >/dev/null || want+=(redis-tools)
    command -v etcd >/dev/null || want+=(etcd-server)
    command -v protoc >/dev/null || want+=(protobuf-compiler)
    if [ ${#want[@]} -gt 0 ]; then
        echo "installing ${want[*]}" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
    fi
}

wait_for() { # what, command...
    local what=$1; shift
    for _ in $(seq 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $what" >&2
    return 1
}

up() {
    if [ -f "$STATE" ]; then
        echo "peers already up in $(cat "$STATE"); run '$0 down' first" >&2
        exit 1
    fi
    install_missing
    local dir=${KV_PEERS_DIR:-$(mktemp -d -t kv-bench-peers.XXXXXX)}
    mkdir -p "$dir"
    echo "$dir" >"$STATE"

    for port in 7001 7002 7003; do
        mkdir -p "$dir/redis-$port"
        redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/redis-$port" \
            --cluster-enabled yes --cluster-config-file nodes.conf \
            --appendonly yes --appendfsync everysec --save '' \
            --daemonize yes --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log"
    done
    for port in 7001 7002 7003; do
        wait_for "redis on $port" redis-cli -p "$port" ping
    done
    redis-cli --cluster create 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 \
        --cluster-replicas 0 --cluster-yes >"$dir/redis-create.log"
    wait_for "the Redis Cluster to be ok" \
        sh -c 'redis-cli -p 7001 cluster info | grep -q cluster_state:ok'

    local cluster=e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$dir/etcd-$i" \
            --listen-client-urls "http://127.0.0.1:2379$i" \
            --advertise-client-urls "http://127.0.0.1:2379$i" \
            --listen-peer-urls "http://127.0.0.1:2380$i" \
            --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token kv-bench >"$dir/etcd-$i.log" 2>&1 &
        echo $! >"$dir/etcd-$i.pid"
    done
    for i in 1 2 3; do
        wait_for "etcd member $i" curl -sf "http://127.0.0.1:2379$i/health"
    done
    echo "Redis Cluster on 127.0.0.1:7001-7003 and etcd on 127.0.0.1:23791-23793, in $dir"
}

down() {
    if [ ! -f "$STATE" ]; then
        echo "no peers up" >&2
        return 0
    fi
    local dir
    dir=$(cat "$STATE")
    for pidfile in "$dir"/*.pid; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for pidfile in "$dir"/*.pid; do
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$dir" "$STATE"
    echo "peers stopped"
}

case ${1:-} in
    install) install_missing ;;
    up) up ;;
    down) down ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
