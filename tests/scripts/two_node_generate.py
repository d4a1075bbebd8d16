"""Generate on a two-node Ray cluster (ray.cluster_utils.Cluster), one CPU per node.

    python tests/scripts/two_node_generate.py CHECKPOINT OUT

Each ShardWriter actor needs one CPU, so two workers must run on two nodes.
Run as its own process: the test session's driver is already joined to another cluster.
Every node binds to 127.0.0.1 (the tests set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so
the driver connects there too).
"""

import sys

import ray
from ray.cluster_utils import Cluster

from gen_jobs.generate import GenerateArgs, generate


def main(checkpoint: str, out: str) -> None:
    node_args = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    try:
        cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        alive = [n for n in ray.nodes() if n["Alive"]]
        print(f"nodes: {len(alive)}", flush=True)
        generate(GenerateArgs(checkpoint=checkpoint, out=out, num_samples=600, rows_per_shard=150, workers=2))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
