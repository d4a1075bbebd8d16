"""The Serve app's config: which models to serve, how to scale and batch them, request limits.

One pydantic object, the `args:` of the app in `serving/config.yaml` (what
`serve run` / `serve deploy` and KubeRay's RayService read) and what
`raygen serve` builds from its arguments. Unknown keys are errors.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from gen_jobs.core.recipes import StrictModel
from gen_jobs.core.storage import Uri

IMPORT_PATH = "serving.app:build_app"


class Batching(StrictModel):
    """Dynamic batching (`@serve.batch`) of one model's requests."""

    max_batch_size: int = Field(32, gt=0, le=4096, description="most samples (rows, not requests) in one sampler call; 1 = off")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10, description="how long a batch waits to fill before it runs")


class Autoscaling(StrictModel):
    """Serve's autoscaling_config for one model's replicas."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, gt=0)
    target_ongoing_requests: float = Field(8, gt=0, description="per replica; above it Serve adds replicas")
    upscale_delay_s: float = Field(5, ge=0)
    downscale_delay_s: float = Field(60, ge=0)

    @model_validator(mode="after")
    def _range(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class ModelSpec(StrictModel):
    """One served model: one Serve deployment wrapping its family's sampler."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="the `model` clients ask for")
    checkpoint: Uri = Field(description="checkpoint folder, or a Ray Train run folder (its newest checkpoint); path or "
                                        "s3://; ${NAME} is read from the environment")
    gpu: float = Field(0, ge=0, le=1, description="GPUs per replica, its sampler on cuda when above 0: true or 1 a "
                                                   "whole GPU, a fraction (0.25) a share of one that other replicas "
                                                   "use too, false or 0 none")
    num_cpus: float = Field(1, gt=0, description="CPUs reserved per replica")
    autoscaling: Autoscaling = Autoscaling()
    batching: Batching = Batching()
    max_ongoing_requests: int = Field(64, gt=0, description="requests one replica works on at once (its batches draw from these)")
    max_queued_requests: int = Field(128, ge=-1, description="requests waiting for a replica; beyond it: 503 (-1 = unbounded)")


class Limits(StrictModel):
    """What one request may ask for; beyond it the answer is a 400 naming the field."""

    max_n: int = Field(8, gt=0, description="samples per request (n, times the number of prompts)")
    max_tokens: int = Field(512, gt=0, description="new tokens per text sample (also capped by the model's context)")
    max_body_bytes: int = Field(1_000_000, gt=0, description="request body size; beyond it: 413")
    max_image_pixels: int = Field(1024 * 1024, gt=0, description="width x height of one returned image")
    max_prompt_chars: int = Field(32_000, gt=0, description="characters of a request's prompts (or chat messages) "
                                                           "together, checked before anything tokenises them")
    max_input_pixels: int = Field(4096 * 4096, gt=0, description="width x height of an uploaded image "
                                                                "(/v1/images/edits), read from its header before decoding")
    max_input_bytes: int = Field(64 * 2**20, gt=0, description="an uploaded image's decoded size: pixels x bytes per "
                                                              "pixel of its mode (16-bit RGB: 6 bytes)")
    max_primer_bytes: int = Field(2_000_000, gt=0, description="a music primer's size as XML, after inflating a "
                                                              "compressed .mxl")
    max_primer_elements: int = Field(10_000, gt=0, description="XML elements of a MusicXML primer (a Bach chorale: "
                                                              "about 2,200)")
    max_primer_notes: int = Field(4_000, gt=0, description="notes of a primer (MIDI or MusicXML)")
    max_primer_parts: int = Field(16, gt=0, description="parts of a MusicXML primer")
    max_primer_measures: int = Field(1_000, gt=0, description="measures of a MusicXML primer, all parts together")
    primer_timeout_s: float = Field(5, gt=0, le=600, description="parsing one MusicXML primer (in a child process, "
                                                                 "killed at the deadline)")
    max_file_bytes: int = Field(200 * 2**20, gt=0, description="an uploaded file (POST /v1/files): OpenAI's limit "
                                                               "for a batch input file, 200 MB")
    max_file_lines: int = Field(50_000, gt=0, description="lines (requests) of an uploaded batch input file: OpenAI's "
                                                         "limit, 50,000")
    request_timeout_s: float = Field(60, gt=0, le=3600, description="a request's deadline, streams included: past it "
                                                                  "its rows are dropped and the answer is a 504")


class Ingress(StrictModel):
    """The HTTP front deployment (routing, validation, auth)."""

    num_replicas: int = Field(1, gt=0)
    max_ongoing_requests: int = Field(256, gt=0)
    max_queued_requests: int = Field(512, ge=-1)


class AppConfig(StrictModel):
    models: list[ModelSpec] = Field(min_length=1)
    limits: Limits = Limits()
    ingress: Ingress = Ingress()
    api_key_env: str = Field(
        "RAYGEN_API_KEY",
        description="environment variable holding the API key; when it is set, requests need `Authorization: Bearer <key>`",
    )
    batch_storage: Uri | None = Field(
        None, description="where uploaded files, batch records and batch outputs live (a folder or s3:// prefix, "
                          "shared by every replica); default: ${RAYGEN_STORAGE}/batch-api when RAYGEN_STORAGE is set "
                          "(on KubeRay, k8s/storage.yaml), else out/batch-api")
    batch_workers: int = Field(2, gt=0, le=4096, description="ShardWriter actors of each batch's Ray job")
    batch_rows_per_shard: int = Field(100, gt=0, description="requests per shard of a batch's dataset: its "
                                                              "request_counts move a shard at a time")
    wait_for_training_s: float = Field(
        0, ge=0, le=7 * 24 * 3600,
        description="how long the app builder waits for each checkpoint to hold a finished training's model "
                    "(0: not at all), so the app can be deployed before or while its models train",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "AppConfig":
        names = [m.name for m in self.models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"model names must be unique; repeated: {', '.join(repeated)}")
        return self


def read_config(data: Any, source: str) -> AppConfig:
    """An AppConfig from a YAML document: a Serve config file (its application whose
    import_path is raygen's) or a bare AppConfig mapping."""
    from pydantic import ValidationError

    from gen_jobs.core.errors import UserError
    from gen_jobs.core.recipes import describe_validation_error

    if isinstance(data, dict) and "applications" in data:
        apps = [a for a in data["applications"] or [] if str(a.get("import_path", "")).startswith("serving.")]
        if not apps:
            raise UserError(f"{source} has no application with import_path {IMPORT_PATH}")
        data = apps[0].get("args") or {}
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a mapping with a `models:` list (or a Serve config file)")
    try:
        return AppConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(f"{source}: {describe_validation_error(e, AppConfig, 'config key')}") from e


def batch_storage(config: AppConfig) -> str:
    """The absolute URI of the app's file and batch storage (replicas may run in another working directory)."""
    import os

    from gen_jobs.core import storage

    if config.batch_storage is not None:
        return storage.absolute(config.batch_storage)
    shared = os.environ.get("RAYGEN_STORAGE")
    return storage.join(shared, "batch-api") if shared else storage.absolute("out/batch-api")
