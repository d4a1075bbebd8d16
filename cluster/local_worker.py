"""One worker node of cluster/local.sh's single-machine cluster, bound to 127.0.0.1.

    python cluster/local_worker.py --address 127.0.0.1:GCS_PORT --num-cpus 2 --ports P1 P2 P3 P4 P5 P6 \
        [--object-store-memory BYTES]

Why not `ray start --address=...`: only in Ray's single-machine mode
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) does every Ray process bind to 127.0.0.1
instead of all interfaces, and in that mode `ray start` refuses to start worker
nodes. So this starts the node with the same `ray._private.node.Node` that
`ray start --block` (and Ray's own multi-node test harness, ray.cluster_utils)
uses, and like `ray start --block` it stays in the foreground until SIGTERM or
SIGINT, then stops the node's processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Start one worker node on 127.0.0.1 and block until SIGTERM.")
    p.add_argument("--address", required=True, help="the head's GCS address, 127.0.0.1:PORT")
    p.add_argument("--num-cpus", type=int, required=True)
    p.add_argument("--object-store-memory", type=int, help="bytes (default: Ray's)")
    p.add_argument("--ports", type=int, nargs=6, required=True, metavar="PORT",
                   help="node manager, object manager, dashboard agent HTTP, dashboard agent gRPC, "
                        "metrics export, runtime-env agent: each node on one machine needs its own")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray reads it: loopback addresses only
    import ray._private.node
    from ray._private.parameter import RayParams

    node_manager, object_manager, agent_http, agent_grpc, metrics, runtime_env = args.ports
    params = RayParams(
        gcs_address=args.address,
        node_ip_address="127.0.0.1",
        num_cpus=args.num_cpus,
        num_gpus=0,
        object_store_memory=args.object_store_memory,
        node_manager_port=node_manager,
        object_manager_port=object_manager,
        dashboard_agent_listen_port=agent_http,
        metrics_agent_port=agent_grpc,
        metrics_export_port=metrics,
        runtime_env_agent_port=runtime_env,
        include_log_monitor=False,  # the head's log monitor already reads this machine's session logs
    )
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(f"worker node {node.node_id} up on 127.0.0.1 ({args.num_cpus} CPUs), joined {args.address}", flush=True)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1):
        dead = node.dead_processes()
        if dead:
            print(f"node processes exited unexpectedly: {[name for name, _ in dead]}", file=sys.stderr, flush=True)
            node.kill_all_processes(check_alive=False, allow_graceful=True)
            return 1
    node.kill_all_processes(check_alive=False, allow_graceful=True)
    print("worker node stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
