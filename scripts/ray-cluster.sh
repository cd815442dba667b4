#!/usr/bin/env bash
# A two-node Ray cluster on this host, for the engine tests and for trying --executor ray: a head and
# a second node, separate `ray start` processes with 1 CPU each, on 127.0.0.1 only.
#   scripts/ray-cluster.sh start DIR   starts both, waits until both are up, prints RAY_ADDRESS=127.0.0.1:PORT
#   scripts/ray-cluster.sh stop DIR    stops both (each `ray start --block` process group, by the pids it wrote)
#   scripts/ray-cluster.sh stop-node DIR   SIGKILLs the second node only (a node lost mid-suite)
# It never runs `ray stop`, which would stop every Ray instance on the host. RAY (default: ray on
# PATH, else .venv/bin/ray) is the ray command. Every port is fixed, from RAY_TEST_PORT (default
# 6479, the head's GCS) to +299, so that two nodes on one host (and Slurm) never ask for the same one.
# Extra `ray start` flags for both nodes: RAY_NODE_ARGS (e.g. "--num-gpus=1" to declare GPUs).
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[[ ( $cmd == start || $cmd == stop || $cmd == stop-node ) && -n $dir ]] || { echo "usage: $0 start|stop|stop-node DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
ray=${RAY:-$(command -v ray || echo "$(dirname "$0")/../.venv/bin/ray")}
port=${RAY_TEST_PORT:-6479}
export RAY_USAGE_STATS_ENABLED=0  # nothing leaves this host
# No token authentication on this loopback-only cluster, whatever ~/.ray holds: Ray 2.60 turns it on
# for a head when ~/.ray/auth_token exists (a local ray.init() writes one) but not for the nodes that
# join it, which are then refused. Drivers of this cluster need RAY_AUTH_MODE=disabled too.
export RAY_AUTH_MODE=disabled

kill_group() {  # $1: the pid file of a `setsid ray start --block`; $2: the first signal (TERM)
    [[ -s $1 ]] || return 0
    local leader pids
    leader=$(cat "$1")
    # its process group, and the workers its raylet started (they are in sessions of their own)
    pids=$(ps -eo pid=,ppid=,pgid= | awk -v g="$leader" '
        { parent[$1] = $2; group[$1] = $3 }
        END { for (p in parent) { q = p; while (q > 1 && group[q] != g) q = parent[q]; if (q > 1) print p } }')
    [[ -n $pids ]] || { rm -f "$1"; return 0; }
    # shellcheck disable=SC2086
    kill "-${2:-TERM}" $pids 2>/dev/null || true
    for _ in $(seq 50); do  # --block stops its processes on SIGTERM; SIGKILL what is left after 5 s
        # shellcheck disable=SC2086
        kill -0 $pids 2>/dev/null || break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    rm -f "$1"
}

case $cmd in
stop) kill_group "$dir/node2.pid"; kill_group "$dir/head.pid"; exit 0 ;;
stop-node) kill_group "$dir/node2.pid" KILL; exit 0 ;;
esac

[[ -x $ray ]] || command -v "$ray" >/dev/null || { echo "ray is not installed (pip install -r requirements.txt)" >&2; exit 1; }
kill_group "$dir/node2.pid"; kill_group "$dir/head.pid"  # a previous start of the same DIR
common=(--num-cpus=1 --node-ip-address=127.0.0.1 --disable-usage-stats --block ${RAY_NODE_ARGS:-})
ports() {  # $1: the node's offset from the GCS port
    local p=$((port + $1))
    echo --ray-client-server-port=$((p + 1)) --dashboard-agent-listen-port=$((p + 2)) --dashboard-agent-grpc-port=$((p + 3)) \
        --runtime-env-agent-port=$((p + 4)) --metrics-export-port=$((p + 5)) --node-manager-port=$((p + 6)) \
        --object-manager-port=$((p + 7)) --min-worker-port=$((p + 100)) --max-worker-port=$((p + 149))
}
# shellcheck disable=SC2046
setsid "$ray" start --head --port="$port" --include-dashboard=false --temp-dir="$dir/tmp" $(ports 0) "${common[@]}" \
    >"$dir/head.log" 2>&1 </dev/null &
echo $! >"$dir/head.pid"
alive() { kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }
started() { grep -q "Ray runtime started" "$dir/$1.log" 2>/dev/null; }  # what `ray start` prints once the node is up
# the second node once the head is up (started at once, it was sometimes refused by the head's GCS)
until started head || ! alive head || (( SECONDS > 90 )); do sleep 0.2; done
if started head; then
    # shellcheck disable=SC2046
    setsid "$ray" start --address="127.0.0.1:$port" $(ports 150) "${common[@]}" >"$dir/node2.log" 2>&1 </dev/null &
    echo $! >"$dir/node2.pid"
    until ! alive node2 || started node2 || (( SECONDS > 150 )); do sleep 0.2; done
fi
if started head && started node2; then
    echo "RAY_ADDRESS=127.0.0.1:$port"
    exit 0
fi
echo "the Ray cluster did not come up with 2 nodes; logs in $dir" >&2
tail -n 5 "$dir/head.log" "$dir/node2.log" >&2 || true
kill_group "$dir/node2.pid"; kill_group "$dir/head.pid"
exit 1
