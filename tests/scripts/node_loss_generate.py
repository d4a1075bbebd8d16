"""Generate on a two-node Ray cluster and remove the worker node mid-job.

    python tests/scripts/node_loss_generate.py CHECKPOINT OUT

As a preempted cloud node: the node is removed without a graceful drain once the
first shard lands. Prints `outcome: completed` or `outcome: failed: <error>`,
then `resumed` after a --resume on the surviving node if the first run failed.
Run as its own process: the test session's driver is joined to another cluster.
"""

import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from gen_jobs.core.errors import UserError
from gen_jobs.generate import GenerateArgs, generate

ROWS = dict(num_samples=4000, rows_per_shard=100, workers=2)


def main(checkpoint: str, out: str) -> None:
    node_args = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    try:
        worker = cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)

        def remove_after_first_shard() -> None:
            while not (Path(out) / "part-00000.parquet").exists():
                time.sleep(0.02)
            cluster.remove_node(worker, allow_graceful=False)
            print("node removed", flush=True)

        threading.Thread(target=remove_after_first_shard, daemon=True).start()
        try:
            generate(GenerateArgs(checkpoint=checkpoint, out=out, **ROWS), log=lambda *_: None)
            print("outcome: completed", flush=True)
        except (UserError, Exception) as e:  # noqa: BLE001 - the test reads what happened
            print(f"outcome: failed: {str(e).splitlines()[0]}", flush=True)
            generate(GenerateArgs(checkpoint=checkpoint, out=out, resume=True, **ROWS), log=lambda *_: None)
            print("resumed", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
