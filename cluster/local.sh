#!/usr/bin/env bash
# A multi-node Ray cluster on this machine: a head that runs no work plus N worker
# nodes, all on 127.0.0.1, with token authentication on, laid out like the Kubernetes
# and AWS clusters. For trying `ray job submit` (and what multi-node changes) locally.
#
#   cluster/local.sh up [N]    # start a head and N worker nodes (default 2); prints the addresses
#   cluster/local.sh status    # print the addresses again
#   cluster/local.sh down      # stop exactly the nodes `up` started (other Ray instances are left alone)
#
# Settings (environment variables):
#   RAYGEN_LOCAL_DIR        state and logs (default: /tmp/raygen-local-$USER); a new or empty folder, or
#                           one this script made before: it never removes anything it did not create
#   RAYGEN_WORKER_CPUS      CPUs each worker node offers (default: this machine's CPUs / N, at least 1)
#   RAYGEN_OBJECT_STORE_MB  object store per node in MiB (default: Ray's, 30% of memory)
#   RAY_AUTH_TOKEN          the cluster's token (default: a new random one)
# Needs `ray` and `python3` on PATH (e.g. `. .venv/bin/activate`).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
STATE="${RAYGEN_LOCAL_DIR:-/tmp/raygen-local-${USER:-$(id -u)}}"
MARK=".raygen-local-cluster"  # in every state folder this script made: the only kind it reuses

die() { echo "error: $*" >&2; exit 2; }

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Free loopback TCP ports outside Ray's worker-port range (10002-19999), which every
# node on this machine shares for its worker processes.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
ports = set()
while len(ports) < int(sys.argv[1]):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if not 10002 <= port <= 19999:
        ports.add(port)
print(*ports)
PY
}

# Run a command in its own session (process group) in the background; its pid is
# also the group id, so `down` can stop it and every process it started.
start_detached() {
    local log="$1"; shift
    if command -v setsid >/dev/null; then
        setsid "$@" >"$log" 2>&1 < /dev/null &
    else
        "$@" >"$log" 2>&1 < /dev/null &
    fi
    echo $!
}

# Ports a node needs besides the head's own; each node on one machine needs its own set.
node_port_flags() {
    echo "--node-manager-port=$1 --object-manager-port=$2 --dashboard-agent-listen-port=$3" \
         "--dashboard-agent-grpc-port=$4 --metrics-export-port=$5 --runtime-env-agent-port=$6"
}

# Ray's record of "the current cluster" on this machine (what a bare `ray.init()` joins).
# `up` keeps what it held and `down` puts it back, so a stopped local cluster is never
# what the next local Ray program tries to join.
ray_record() { python3 -c 'from ray._common.utils import get_ray_address_file; print(get_ray_address_file(None))'; }

save_ray_record() {
    local record; record=$(ray_record)
    if [[ -f "$record" ]]; then cp "$record" "$STATE/ray_record.before"; else rm -f "$STATE/ray_record.before"; fi
}

restore_ray_record() {
    local record; record=$(ray_record)
    [[ -f "$STATE/addresses" ]] || return 0
    # shellcheck disable=SC1091
    local ours; ours=$(source "$STATE/addresses" && echo "$GCS")
    # Only a record that still names this cluster is ours to undo (another `ray start` may have written since).
    if [[ -f "$record" && "$(cat "$record")" == "$ours" ]]; then
        if [[ -f "$STATE/ray_record.before" ]]; then cp "$STATE/ray_record.before" "$record"; else rm -f "$record"; fi
    fi
    rm -f "$STATE/ray_record.before"
}

# Until the cluster reports $1 alive nodes: 0. A node process that exits meanwhile: 1, with
# its name in EXITED (the caller decides whether to start it again). 120 s: fail with the logs.
wait_for_nodes() {
    local want="$1" dashboard="$2" deadline=$((SECONDS + 120)) have=0
    while (( SECONDS < deadline )); do
        for pidfile in "$STATE"/*.pid; do
            alive "$pidfile" || { EXITED=$(basename "$pidfile" .pid); return 1; }
        done
        have=$(ray list nodes --address "$dashboard" --filter state=ALIVE --format json 2>/dev/null \
               | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
        (( have >= want )) && return 0
        sleep 1
    done
    die "only $have of $want nodes came up in 120 s; logs: $STATE/logs/"
}

exited_while_starting() {  # node name, its log file's name
    tail -n 30 "$STATE/logs/$2" >&2 || true
    die "$1 exited while starting; log: $STATE/logs/$2"
}

# Worker node $1 (of a cluster with $1 + 1 nodes once it is up) joining the GCS on port $2, seen
# through the dashboard on port $3; the rest are extra flags for the node (the object store's size).
# Ray's node start waits a fixed 30 s for the new raylet to register with the GCS
# (ray/_private/node.py), which a loaded small machine can miss; such a worker is stopped and
# started again, up to 3 tries.
start_worker() {
    local i="$1" gcs_port="$2" dashboard_port="$3" try pid log p1 p2 p3 p4 p5 p6
    local node_flags=("${@:4}")
    for try in 1 2 3; do
        log="worker-$i.log"
        (( try == 1 )) || log="worker-$i-try$try.log"
        read -r p1 p2 p3 p4 p5 p6 <<< "$(free_ports 6)"
        pid=$(start_detached "$STATE/logs/$log" python3 "$HERE/local_worker.py" --address="127.0.0.1:$gcs_port" \
            --num-cpus="$WORKER_CPUS" --ports "$p1" "$p2" "$p3" "$p4" "$p5" "$p6" "${node_flags[@]}")
        echo "$pid" > "$STATE/worker-$i.pid"
        wait_for_nodes $(( i + 1 )) "http://127.0.0.1:$dashboard_port" && return 0
        [[ "$EXITED" == "worker-$i" ]] || exited_while_starting "$EXITED" "$EXITED.log"
        if (( try == 3 )) || ! grep -q "timed out during startup" "$STATE/logs/$log"; then
            exited_while_starting "$EXITED" "$log"
        fi
        echo "worker-$i did not register within Ray's 30 s (try $try of 3); starting it again" >&2
        kill -KILL -- "-$pid" 2>/dev/null || true  # whatever that try started (its raylet may still be up)
    done
}

print_addresses() {
    # shellcheck disable=SC1091
    source "$STATE/addresses"
    cat <<MSG
raygen local cluster: a head (no work) + $WORKERS worker node(s) of $WORKER_CPUS CPUs on 127.0.0.1
  dashboard, jobs   $DASHBOARD
  GCS (ray.init)    $GCS
  Ray client        ray://127.0.0.1:$CLIENT
  token             $STATE/auth_token
  logs              $STATE/logs/
use it:
  source $STATE/env      # RAY_ADDRESS=$GCS (raygen), RAY_API_SERVER_ADDRESS=$DASHBOARD (ray job submit), token
  ray job submit --working-dir $ROOT -- python -m gen_jobs.generate --checkpoint $ROOT/out/runs/dcgan_digits \\
      --out $ROOT/out/local/digits --num-samples 10000 --workers $(( WORKERS > 0 ? WORKERS : 1 ))
  (a job runs in a copy of --working-dir without what .gitignore lists, such as out/: give it absolute paths)
  cluster/local.sh down
MSG
}

up() {
    local workers="${1:-2}"
    [[ "$workers" =~ ^[0-9]+$ ]] && (( workers <= 32 )) || die "N must be a number of worker nodes from 0 to 32, got '$workers'"
    # The machine's CPUs shared out, so N nodes on a small machine do not promise work it cannot do.
    local cpus; cpus=$(nproc 2>/dev/null || echo 2)
    WORKER_CPUS="${RAYGEN_WORKER_CPUS:-$(( workers > 0 && cpus / workers > 1 ? cpus / workers : 1 ))}"
    [[ "$WORKER_CPUS" =~ ^[0-9]+$ ]] || die "RAYGEN_WORKER_CPUS must be a whole number, got '$WORKER_CPUS'"
    command -v ray >/dev/null || die "ray is not on PATH: activate raygen's environment first (. .venv/bin/activate)"
    python3 -c "import ray" 2>/dev/null || die "python3 on PATH cannot import ray: activate raygen's environment first (. .venv/bin/activate)"
    if alive "$STATE/head.pid"; then
        die "a local cluster is already up (state in $STATE); run 'cluster/local.sh down' first"
    fi
    if [[ -e "$STATE" && ! -f "$STATE/$MARK" ]] && [[ ! -d "$STATE" || -n "$(ls -A "$STATE")" ]]; then
        die "RAYGEN_LOCAL_DIR $STATE already holds files this script did not make; give a new or empty folder"
    fi
    mkdir -p "$STATE"
    touch "$STATE/$MARK"
    chmod 700 "$STATE"
    # What an earlier run left (logs, a failed start's files): only the names this script writes.
    rm -rf "$STATE/logs"
    rm -f "$STATE"/head.pid "$STATE"/worker-*.pid "$STATE/addresses" "$STATE/env" "$STATE/auth_token"
    mkdir -p "$STATE/logs"
    save_ray_record
    # A failed start leaves nothing running: stop whatever came up (the logs stay).
    trap 'echo "stopping the nodes that did start" >&2; down >&2' EXIT

    # Token authentication, as on any shared cluster: an open Ray port runs anyone's code.
    local token="${RAY_AUTH_TOKEN:-}"
    [[ -n "$token" ]] || token=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    (umask 077; printf '%s' "$token" > "$STATE/auth_token")
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$token"
    unset RAY_ADDRESS  # never join (or be joined to) whatever cluster this shell points at
    export RAY_USAGE_STATS_ENABLED=0
    # On SIGTERM a Ray 2.60 node first drains (waits up to 30 s for its work to move
    # elsewhere); `down` stops every node, so there is nowhere to drain to.
    export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"

    local store=()
    if [[ -n "${RAYGEN_OBJECT_STORE_MB:-}" ]]; then
        [[ "$RAYGEN_OBJECT_STORE_MB" =~ ^[0-9]+$ ]] || die "RAYGEN_OBJECT_STORE_MB must be a whole number of MiB"
        store=(--object-store-memory=$(( RAYGEN_OBJECT_STORE_MB * 1024 * 1024 )))
    fi

    read -r gcs dashboard client p1 p2 p3 p4 p5 p6 <<< "$(free_ports 9)"
    # Loopback only: in Ray's single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
    # every process binds to 127.0.0.1; otherwise Ray swaps --node-ip-address=127.0.0.1
    # for the machine's network address and binds to all interfaces. `ray start` refuses
    # worker nodes in that mode, so local_worker.py starts them (see its docstring).
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    # shellcheck disable=SC2046
    echo "$(start_detached "$STATE/logs/head.log" ray start --head --block --node-ip-address=127.0.0.1 \
        --port="$gcs" --dashboard-host=127.0.0.1 --dashboard-port="$dashboard" --ray-client-server-port="$client" \
        $(node_port_flags "$p1" "$p2" "$p3" "$p4" "$p5" "$p6") --num-cpus=0 --num-gpus=0 \
        --include-dashboard=true --disable-usage-stats "${store[@]}")" > "$STATE/head.pid"
    cat > "$STATE/addresses" <<VARS
WORKERS=$workers
WORKER_CPUS=$WORKER_CPUS
GCS=127.0.0.1:$gcs
DASHBOARD=http://127.0.0.1:$dashboard
CLIENT=$client
VARS
    cat > "$STATE/env" <<VARS
# RAY_ADDRESS: the GCS, which raygen's commands (ray.init) join; RAY_API_SERVER_ADDRESS: the dashboard,
# which 'ray job submit' and 'ray list' use before RAY_ADDRESS.
export RAY_ADDRESS=127.0.0.1:$gcs RAY_API_SERVER_ADDRESS=http://127.0.0.1:$dashboard RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$STATE/auth_token
VARS
    wait_for_nodes 1 "http://127.0.0.1:$dashboard" || exited_while_starting "$EXITED" "$EXITED.log"

    # One worker node at a time, each registered before the next starts: started together on a
    # small machine, they starve each other and Ray gives up on them ("timed out during startup").
    for i in $(seq 1 "$workers"); do start_worker "$i" "$gcs" "$dashboard" "${store[@]}"; done
    trap - EXIT
    print_addresses
}

down() {
    if ! compgen -G "$STATE/*.pid" >/dev/null; then
        echo "no local cluster to stop (nothing in $STATE)"
        return 0
    fi
    # Workers first, the head last. SIGTERM to each node's leading process (`ray start
    # --block`, local_worker.py) lets it stop its node's processes in order (signalling
    # the whole group at once leaves it hanging); whatever is left in the process group
    # after 30 s gets SIGKILL.
    local f pid deadline
    for f in "$STATE"/worker-*.pid "$STATE/head.pid"; do
        [[ -f "$f" ]] || continue
        pid=$(cat "$f")
        if kill -TERM "$pid" 2>/dev/null; then
            deadline=$((SECONDS + 30))
            while kill -0 -- "-$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
        fi  # (a leader already gone, as after a failed start, has no orderly shutdown left to wait for)
        kill -KILL -- "-$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while kill -0 -- "-$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
        rm -f "$f"
    done
    restore_ray_record
    rm -f "$STATE/env" "$STATE/addresses" "$STATE/auth_token"
    echo "local cluster stopped (logs kept in $STATE/logs/)"
}

case "${1:-}" in
    up) up "${2:-2}" ;;
    down) down ;;
    status)
        alive "$STATE/head.pid" || { echo "no local cluster is up (state: $STATE)"; exit 1; }
        print_addresses ;;
    *) echo "usage: cluster/local.sh up [N] | status | down" >&2; exit 2 ;;
esac
