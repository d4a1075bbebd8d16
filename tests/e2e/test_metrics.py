"""raygen's own metrics as Prometheus scrapes them: the session's Ray node's metrics endpoint after real jobs,
a real training run and real requests to the Serve app.

The text is parsed with prometheus_client's parser (what Prometheus understands), and each metric
must be there with its type and the value the job's manifest says it should have. Ray exports
`raygen_generate_rows` as the counter `ray_raygen_generate_rows_total` (gen_jobs/core/metrics.py).
"""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import CLUSTER, TINY
from gen_jobs.core.recipes import load_recipe
from gen_jobs.generate import GenerateArgs, generate
from gen_jobs.train import train
from test_style import photo_folder

EXPORT_WAIT_S = 90  # Ray's workers report metrics to their node's agent every few seconds


def scrape() -> dict[tuple[str, str], list]:
    """{(family name, type): samples} of the session node's metrics endpoint."""
    text = urllib.request.urlopen(CLUSTER["metrics"], timeout=10).read().decode()
    return {(family.name, family.type): family.samples for family in text_string_to_metric_families(text)}


def value(families: dict, name: str, kind: str, dataset: str) -> float | None:
    """The value of metric `name` of type `kind` for `dataset` (a counter's `_total` sample), None if absent."""
    samples = [s for s in families.get((name, kind), []) if s.labels.get("dataset") == dataset
               and (kind != "counter" or s.name.endswith("_total"))]
    return sum(s.value for s in samples) if samples else None


def wait_for(expected: dict[tuple[str, str], float], dataset: str) -> dict:
    """Scrape until every expected value is exported (or EXPORT_WAIT_S pass); the last scrape."""
    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        families = scrape()
        got = {key: value(families, *key, dataset) for key in expected}
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(2)


def test_a_gated_generation_job_exports_what_its_manifest_records(ray_cluster, random_checkpoint, tmp_path):
    out = tmp_path / "digits"
    manifest = generate(GenerateArgs(checkpoint=random_checkpoint, out=str(out), num_samples=60, rows_per_shard=20,
                                     filter="confidence>=0.2", max_attempts=3, workers=2), log=lambda _: None)
    gate = manifest.gate_counts
    assert gate["accepted_later"] and gate["rejected"], gate  # an untrained model: both kinds of retried row
    expected = {
        ("ray_raygen_generate_rows", "counter"): manifest.num_rows,
        ("ray_raygen_generate_shards", "counter"): len(manifest.shards),
        ("ray_raygen_generate_bytes", "counter"): sum(s.bytes for s in manifest.shards),
        ("ray_raygen_generate_rows_retried", "counter"): gate["accepted_later"],
        ("ray_raygen_generate_rows_rejected", "counter"): gate["rejected"],
        ("ray_raygen_generate_rows_left", "gauge"): 0,
    }
    assert wait_for(expected, str(out)) == expected
    rate = value(scrape(), "ray_raygen_generate_rows_per_second", "gauge", str(out))
    assert rate is not None and rate > 0


def test_a_generation_job_counts_the_inputs_its_family_refused(ray_cluster, style_checkpoint, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=3)
    (photos / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "stylised"
    manifest = generate(GenerateArgs(checkpoint=style_checkpoint, input=str(photos), out=str(out), workers=1),
                        log=lambda _: None)
    expected = {("ray_raygen_generate_rows", "counter"): manifest.num_rows,
                ("ray_raygen_generate_bad_inputs", "counter"): 1}
    assert wait_for(expected, str(out)) == expected


def test_a_training_run_exports_its_epochs_steps_losses(ray_cluster, tmp_path):
    import ray

    recipe = load_recipe("dcgan_digits", [*TINY, "train.epochs=2"])
    train(recipe, str(tmp_path / "runs"), "metrics", workers=1, gpu=False)
    labels = {"job": ray.get_runtime_context().get_job_id(), "recipe": "dcgan_digits"}
    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        families = scrape()
        epoch = labelled(families, "ray_raygen_train_epoch", "gauge", labels)
        if epoch == 2 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert epoch == 2
    steps = labelled(families, "ray_raygen_train_step", "gauge", labels)
    assert steps == 2 * (1797 // recipe.train.batch_size)  # 2 epochs of the 1,797 bundled digits
    for loss in ("loss_d", "loss_g"):
        assert labelled(families, "ray_raygen_train_loss", "gauge", {**labels, "name": loss}) is not None, loss


def labelled(families: dict, name: str, kind: str, labels: dict, suffix: str = "") -> float | None:
    """The summed value of a metric's samples (those named name+suffix) that carry all of `labels`."""
    samples = [s for s in families.get((name, kind), []) if s.name == name + suffix
               and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(s.value for s in samples) if samples else None


def serve_counts(families: dict) -> dict[str, float]:
    route = "/v1/images/generations"
    return {
        "ok": labelled(families, "ray_raygen_serve_requests", "counter", {"model": "digits", "route": route,
                                                                           "status": "200"}, "_total") or 0,
        "bad": labelled(families, "ray_raygen_serve_requests", "counter", {"model": "digits", "route": route,
                                                                            "status": "400"}, "_total") or 0,
        "unknown model": labelled(families, "ray_raygen_serve_requests", "counter", {"model": "", "route": route,
                                                                                      "status": "404"}, "_total") or 0,
        "timed": labelled(families, "ray_raygen_serve_request_seconds", "histogram",
                          {"model": "digits", "route": route}, "_count") or 0,
        "batches": labelled(families, "ray_raygen_serve_batch_rows", "histogram", {"model": "digits"}, "_count") or 0,
    }


def test_serve_counts_and_times_every_answer_by_model_route_and_status(http):
    before = serve_counts(scrape())
    for seed in range(3):
        assert http.post("/v1/images/generations", json={"model": "digits", "n": 2, "seed": seed}).status_code == 200
    assert http.post("/v1/images/generations", json={"model": "digits", "n": 999}).status_code == 400
    assert http.post("/v1/images/generations", json={"model": "nobody", "n": 1}).status_code == 404
    expected = {"ok": before["ok"] + 3, "bad": before["bad"] + 1, "unknown model": before["unknown model"] + 1,
                "timed": before["timed"] + 4}
    # Each process exports its own metrics on its own clock: the gateway's counts and the model replica's batch
    # histogram (three requests of 2 rows: one batch or more) arrive at different moments.
    def arrived(counts: dict) -> bool:
        return {k: counts[k] for k in expected} == expected and counts["batches"] >= before["batches"] + 1

    deadline = time.monotonic() + EXPORT_WAIT_S
    while not arrived(after := serve_counts(scrape())) and time.monotonic() < deadline:
        time.sleep(2)
    assert {k: after[k] for k in expected} == expected
    assert after["batches"] >= before["batches"] + 1
