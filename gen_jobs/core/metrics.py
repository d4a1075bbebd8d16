"""raygen's own Prometheus metrics, exported through Ray's metrics API (`ray.util.metrics`).

    used by gen_jobs.data.shard_writer (the ShardWriter actors), gen_jobs.generate (the driver),
    gen_jobs.training.harness (rank 0 of a training run) and serving (the gateway and the model replicas)

Each Ray node's metrics agent serves them beside Ray's own on the node's metrics port
(`ray start --metrics-export-port`; on Kubernetes the PodMonitor of k8s/components/monitoring
scrapes it). Ray prefixes every name with `ray_`, and exports a counter as `<name>_total`:
`raygen_generate_rows` is scraped as `ray_raygen_generate_rows_total`.

Generation, labelled by `job` (Ray's job id) and `dataset` (the --out URI):

    raygen_generate_rows            counter  rows written
    raygen_generate_shards          counter  shards written
    raygen_generate_bytes           counter  bytes of the shards written
    raygen_generate_rows_retried    counter  rows --filter accepted after more than one candidate
    raygen_generate_rows_rejected   counter  rows no candidate of which passed --filter (kept, status 'rejected')
    raygen_generate_bad_inputs      counter  rows whose input the family refused (an unreadable image), kept
                                             with their status
    raygen_generate_shard_retries   counter  shards started again in the run (their actor died mid-shard and
                                             Ray Data ran the shard on its restarted actor)
    raygen_generate_rows_left       gauge    rows of the run still to write
    raygen_generate_rows_per_second gauge    the run's rate so far

Training, labelled by `job` and `recipe`, from rank 0 of the run:

    raygen_train_epoch              gauge    epochs finished
    raygen_train_step               gauge    optimiser steps taken in the run (epoch x steps per epoch + step)
    raygen_train_loss               gauge    each per-epoch mean loss, labelled `name` (loss_d, loss_g, train_loss, ...)
    raygen_train_guard_events       counter  the training guards' events (rollbacks, collapse warnings)

Serve, labelled by `model` (a request for no model, or an unknown one: "") and `route`:

    raygen_serve_requests           counter  answers, labelled `status` (200, 400, 503, ...)
    raygen_serve_request_seconds    histogram  time to the answer's headers (a stream: to its first event)
    raygen_serve_batch_rows         histogram  rows in each batch a model replica samples (model only)
    raygen_serve_rows_cancelled     counter  rows a replica stopped because their client went away (model only)
    raygen_serve_queue_refusals     counter  requests refused with 503 because the model's queue was full

Each group is one table of `Metric`s (name, type, help, labels): the factories make Ray's metric
objects from it, and `EXPORTED` (what the dashboard may name) is derived from the same tables. The
metric objects are made on first use in each process (a Ray worker or the driver), never at import,
and only where Ray is initialised.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from typing import Literal


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()  # a histogram's bucket boundaries

    def make(self):
        """Ray's metric object for this process (Ray must be initialised)."""
        from ray.util.metrics import Counter, Gauge, Histogram

        if self.kind == "histogram":
            return Histogram(self.name, self.description, list(self.boundaries), self.tags)
        return (Counter if self.kind == "counter" else Gauge)(self.name, self.description, self.tags)

    @property
    def scraped(self) -> str:
        """The name Prometheus scrapes: Ray prefixes `ray_` and ends a counter in `_total`."""
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")


GENERATION_TAGS = ("job", "dataset")
TRAINING_TAGS = ("job", "recipe")
# Request latencies from a cached image (milliseconds) to a long text (a minute, the default deadline).
LATENCY_BOUNDARIES_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BOUNDARIES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

GENERATION = {
    "rows": Metric("raygen_generate_rows", "counter", "Rows written to the dataset's shards.", GENERATION_TAGS),
    "shards": Metric("raygen_generate_shards", "counter", "Shards written.", GENERATION_TAGS),
    "bytes": Metric("raygen_generate_bytes", "counter", "Bytes of the shards written.", GENERATION_TAGS),
    "rows_retried": Metric("raygen_generate_rows_retried", "counter",
                           "Rows --filter accepted after more than one candidate.", GENERATION_TAGS),
    "rows_rejected": Metric("raygen_generate_rows_rejected", "counter",
                            "Rows no candidate of which passed --filter (kept, status 'rejected').", GENERATION_TAGS),
    "bad_inputs": Metric("raygen_generate_bad_inputs", "counter",
                         "Rows whose input the family refused (kept with their status).", GENERATION_TAGS),
    "shard_retries": Metric("raygen_generate_shard_retries", "counter",
                            "Shards started again after their actor died mid-shard.", GENERATION_TAGS),
    "rows_left": Metric("raygen_generate_rows_left", "gauge", "Rows of the run still to write.", GENERATION_TAGS),
    "rows_per_second": Metric("raygen_generate_rows_per_second", "gauge", "Rows written per second so far in the run.",
                              GENERATION_TAGS),
}
TRAINING = {
    "epoch": Metric("raygen_train_epoch", "gauge", "Epochs finished.", TRAINING_TAGS),
    "step": Metric("raygen_train_step", "gauge", "Optimiser steps taken in the run.", TRAINING_TAGS),
    "loss": Metric("raygen_train_loss", "gauge", "A per-epoch mean loss, by name.", (*TRAINING_TAGS, "name")),
    "guard_events": Metric("raygen_train_guard_events", "counter",
                           "Training guard events (rollbacks, collapse warnings).", TRAINING_TAGS),
}
SERVE = {
    "requests": Metric("raygen_serve_requests", "counter", "Answers, by model, route and status code.",
                       ("model", "route", "status")),
    "request_seconds": Metric("raygen_serve_request_seconds", "histogram",
                              "Seconds to an answer's headers, by model and route.", ("model", "route"),
                              LATENCY_BOUNDARIES_S),
    "batch_rows": Metric("raygen_serve_batch_rows", "histogram", "Rows in each batch a model replica samples.",
                         ("model",), BATCH_BOUNDARIES),
    "rows_cancelled": Metric("raygen_serve_rows_cancelled", "counter",
                             "Rows stopped because their client went away.", ("model",)),
    "queue_refusals": Metric("raygen_serve_queue_refusals", "counter",
                             "Requests refused (503) because the model's queue was full.", ("model",)),
}

# Every metric raygen exports, as Prometheus scrapes it, with its type (what the dashboard may name).
EXPORTED = {m.scraped: m.kind for table in (GENERATION, TRAINING, SERVE) for m in table.values()}


@dataclass(frozen=True)
class GenerationMetrics:
    rows: object
    shards: object
    bytes: object
    rows_retried: object
    rows_rejected: object
    bad_inputs: object
    shard_retries: object
    rows_left: object
    rows_per_second: object


@dataclass(frozen=True)
class TrainingMetrics:
    epoch: object
    step: object
    loss: object
    guard_events: object


@dataclass(frozen=True)
class ServeMetrics:
    requests: object
    request_seconds: object
    batch_rows: object
    rows_cancelled: object
    queue_refusals: object


def _made(group: type, table: dict[str, Metric]):
    """`group` (one of the dataclasses above) with each field's metric made from `table`."""
    assert {f.name for f in fields(group)} == set(table), f"{group.__name__} and its table differ"
    return group(**{key: metric.make() for key, metric in table.items()})


@cache
def generation() -> GenerationMetrics:
    """This process's generation metrics (Ray must be initialised: a Ray worker or a connected driver)."""
    return _made(GenerationMetrics, GENERATION)


@cache
def training() -> TrainingMetrics:
    return _made(TrainingMetrics, TRAINING)


@cache
def serve() -> ServeMetrics:
    return _made(ServeMetrics, SERVE)


def ray_running() -> bool:
    """Whether this process may export metrics: it runs under Ray (a worker, an actor, a connected driver)."""
    import ray

    return ray.is_initialized()


def add(counter, value: float, tags: dict[str, str]) -> None:
    """counter += value (Ray's counters take only positive increments: a zero adds nothing)."""
    if value > 0:
        counter.inc(value, tags)


def generation_tags(dataset: str) -> dict[str, str]:
    """The labels of a run's generation metrics: this Ray job's id and the dataset's URI."""
    import ray

    return {"job": ray.get_runtime_context().get_job_id(), "dataset": dataset}


def training_tags(recipe: str) -> dict[str, str]:
    import ray

    return {"job": ray.get_runtime_context().get_job_id(), "recipe": recipe}
