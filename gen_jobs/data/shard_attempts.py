"""How often each shard of a run was started: a small actor the driver owns, asked by the ShardWriters.

    used by gen_jobs.generate (starts one per run) and gen_jobs.data.shard_writer (asks it before each shard)

Ray Data runs a map on an actor pool with `max_restarts=-1, max_task_retries=-1`: when a ShardWriter
dies mid-shard (OOM, a killed process, a lost node) Ray restarts it and sends it the shard again. Nothing
inside the new actor can tell a shard's first start from its second, so the actors ask this registry,
which lives as long as the driver: a second start of a shard is a shard retry, counted in the run's
metrics (`raygen_generate_shard_retries`) and the run's last log line.
"""

from __future__ import annotations

from collections import Counter


class ShardAttempts:
    """{shard: times started} for one run. A Ray actor (`start_registry`); plain methods for tests."""

    def __init__(self) -> None:
        self.started: Counter[int] = Counter()

    def start(self, shard: int) -> int:
        """Record that `shard` starts now; which start this is (1: the first)."""
        self.started[shard] += 1
        return self.started[shard]

    def retried(self) -> int:
        """Starts beyond each shard's first: how many shard retries the run had."""
        return sum(n - 1 for n in self.started.values())


def start_registry():
    """A ShardAttempts actor on the driver's node (it needs no CPU; soft affinity: another node if this one
    cannot take it). Its owner is the driver, so it goes when the run does."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0)(ShardAttempts).options(scheduling_strategy=here).remote()


def started_before(registry, shard: int) -> bool:
    """Whether `shard` was started before in this run (False without a registry, or when it is unreachable:
    counting retries must never stop a shard)."""
    import ray

    if registry is None:
        return False
    try:
        return ray.get(registry.start.remote(shard), timeout=30) > 1
    except (ray.exceptions.RayError, TimeoutError):
        return False


def retries(registry) -> int:
    """The run's shard retries so far (0 when the registry is unreachable)."""
    import ray

    try:
        return ray.get(registry.retried.remote(), timeout=30)
    except (ray.exceptions.RayError, TimeoutError):
        return 0
