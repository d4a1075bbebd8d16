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

The metric objects are made on first use in each process (a Ray worker or the driver), never at
import, and only where Ray is initialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

GENERATION_TAGS = ("job", "dataset")


@dataclass(frozen=True)
class GenerationMetrics:
    rows: object
    shards: object
    bytes: object
    rows_retried: object
    rows_rejected: object
    bad_inputs: object
    rows_left: object
    rows_per_second: object


@cache
def generation() -> GenerationMetrics:
    """This process's generation metrics (Ray must be initialised: a Ray worker or a connected driver)."""
    from ray.util.metrics import Counter, Gauge

    def counter(name: str, description: str) -> Counter:
        return Counter(f"raygen_generate_{name}", description, GENERATION_TAGS)

    return GenerationMetrics(
        rows=counter("rows", "Rows written to the dataset's shards."),
        shards=counter("shards", "Shards written."),
        bytes=counter("bytes", "Bytes of the shards written."),
        rows_retried=counter("rows_retried", "Rows --filter accepted after more than one candidate."),
        rows_rejected=counter("rows_rejected", "Rows no candidate of which passed --filter (kept, status 'rejected')."),
        bad_inputs=counter("bad_inputs", "Rows whose input the family refused (kept with their status)."),
        rows_left=Gauge("raygen_generate_rows_left", "Rows of the run still to write.", GENERATION_TAGS),
        rows_per_second=Gauge("raygen_generate_rows_per_second", "Rows written per second so far in the run.",
                              GENERATION_TAGS),
    )


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


TRAINING_TAGS = ("job", "recipe")


@dataclass(frozen=True)
class TrainingMetrics:
    epoch: object
    step: object
    loss: object
    guard_events: object


@cache
def training() -> TrainingMetrics:
    from ray.util.metrics import Counter, Gauge

    return TrainingMetrics(
        epoch=Gauge("raygen_train_epoch", "Epochs finished.", TRAINING_TAGS),
        step=Gauge("raygen_train_step", "Optimiser steps taken in the run.", TRAINING_TAGS),
        loss=Gauge("raygen_train_loss", "A per-epoch mean loss, by name.", (*TRAINING_TAGS, "name")),
        guard_events=Counter("raygen_train_guard_events", "Training guard events (rollbacks, collapse warnings).",
                             TRAINING_TAGS),
    )


def training_tags(recipe: str) -> dict[str, str]:
    import ray

    return {"job": ray.get_runtime_context().get_job_id(), "recipe": recipe}


# Request latencies from a cached image (milliseconds) to a long text (a minute, the default deadline).
LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass(frozen=True)
class ServeMetrics:
    requests: object
    request_seconds: object
    batch_rows: object
    rows_cancelled: object
    queue_refusals: object


@cache
def serve() -> ServeMetrics:
    from ray.util.metrics import Counter, Histogram

    return ServeMetrics(
        requests=Counter("raygen_serve_requests", "Answers, by model, route and status code.",
                         ("model", "route", "status")),
        request_seconds=Histogram("raygen_serve_request_seconds", "Seconds to an answer's headers, by model and route.",
                                  LATENCY_BOUNDARIES_S, ("model", "route")),
        batch_rows=Histogram("raygen_serve_batch_rows", "Rows in each batch a model replica samples.",
                             BATCH_BOUNDARIES, ("model",)),
        rows_cancelled=Counter("raygen_serve_rows_cancelled", "Rows stopped because their client went away.",
                               ("model",)),
        queue_refusals=Counter("raygen_serve_queue_refusals", "Requests refused (503) because the model's queue was full.",
                               ("model",)),
    )


# Every metric raygen exports, as Prometheus scrapes it (what the dashboard may name; tests check both).
EXPORTED = {
    **{f"ray_raygen_generate_{n}_total": "counter" for n in
       ("rows", "shards", "bytes", "rows_retried", "rows_rejected", "bad_inputs")},
    "ray_raygen_generate_rows_left": "gauge", "ray_raygen_generate_rows_per_second": "gauge",
    "ray_raygen_train_epoch": "gauge", "ray_raygen_train_step": "gauge", "ray_raygen_train_loss": "gauge",
    "ray_raygen_train_guard_events_total": "counter",
    "ray_raygen_serve_requests_total": "counter", "ray_raygen_serve_request_seconds": "histogram",
    "ray_raygen_serve_batch_rows": "histogram", "ray_raygen_serve_rows_cancelled_total": "counter",
    "ray_raygen_serve_queue_refusals_total": "counter",
}
