"""The Serve application: an HTTP gateway in front of one deployment per model.

    serve run serving/config.yaml       # or `raygen serve`
    serve deploy serving/config.yaml    # onto a running cluster (KubeRay's RayService does the same)

`build_app(AppConfig)` is the typed app builder that config.yaml's import_path
names. For each model it resolves the checkpoint (a run folder means its newest
checkpoint), reads the family from it, and binds a `ModelServer` with that
model's replica, autoscaling, batching and back-pressure settings. The
`Gateway` (FastAPI, see serving.http) validates, authenticates and routes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from gen_jobs.core.errors import UserError
from serving import request_metrics
from serving.apis import api_module
from serving.batches import BatchStore
from serving.config import AppConfig, Limits, batch_storage
from serving.errors import ApiError
from serving.files import FileStore
from serving.model_server import ModelServer


@dataclass
class ServedModel:
    name: str
    family: str
    kind: str
    handle: DeploymentHandle


@serve.deployment
@serve.ingress()
class Gateway:
    def __init__(self, models: list[dict], handles: dict[str, DeploymentHandle], limits: dict,
                 api_key_sha256: str | None, storage_root: str, checkpoints: dict[str, str], batch_job: dict):
        self.models = {m["name"]: ServedModel(m["name"], m["family"], api_module(m["family"]).KIND, handles[m["name"]])
                       for m in models}
        self.limits = Limits(**limits)
        self.api_key_sha256 = api_key_sha256
        self.created = int(time.time())
        self._descriptions: dict[str, dict] = {}
        # The Files and Batches APIs (serving.files, serving.batches): records in storage, shared by every replica.
        self.storage_root, self.checkpoints, self.batch_job = storage_root, checkpoints, batch_job
        self.files, self.batches = FileStore(storage_root), BatchStore(storage_root)

    def __serve_build_asgi_app__(self):
        from serving.http import http_app

        return http_app(self)

    # ------------------------------------------------------------ used by the routes

    def authorized(self, header: str | None) -> bool:
        if self.api_key_sha256 is None:
            return True
        scheme, _, key = (header or "").partition(" ")
        digest = hashlib.sha256(key.strip().encode()).hexdigest()
        return scheme.lower() == "bearer" and hmac.compare_digest(digest, self.api_key_sha256)

    def model(self, name: str, kind: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise ApiError(404, f"the model {name!r} does not exist; served models: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        request_metrics.name_model(name)
        if served.kind != kind:
            raise ApiError(400, f"{name!r} is a {served.kind} model ({served.family}); it does not serve {kind} requests",
                           param="model")
        return served

    async def describe(self, served: ServedModel) -> dict:
        if served.name not in self._descriptions:
            self._descriptions[served.name] = await served.handle.describe.remote()
        return self._descriptions[served.name]

    def timed_out(self) -> ApiError:
        return ApiError(504, f"the model did not answer within {self.limits.request_timeout_s:g} s "
                             "(limits.request_timeout_s); its rows were dropped: retry, or ask for less", code="timeout")

    def refused(self, served: ServedModel, error: Exception) -> ApiError:
        """The answer for a model call that raised; a full queue (503) is counted for the model."""
        answer = api_error(error)
        if answer.status == 503:
            request_metrics.refused_for_a_full_queue(served.name)
        return answer

    async def call(self, served: ServedModel, request) -> dict:
        response = served.handle.generate.remote(request)
        try:
            async with asyncio.timeout(self.limits.request_timeout_s) as deadline:
                result = await response
        except TimeoutError:
            if not deadline.expired():
                raise
            response.cancel()  # the replica drops the request's rows
            raise self.timed_out() from None
        except Exception as e:
            raise self.refused(served, e) from e
        if isinstance(result, ApiError):
            raise result
        return result

    async def stream(self, served: ServedModel, request):
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
        from fastapi.responses import StreamingResponse

        chunks = served.handle.options(stream=True).generate_stream.remote(request)
        ends = asyncio.get_running_loop().time() + self.limits.request_timeout_s  # the whole stream's deadline
        try:
            async with asyncio.timeout_at(ends) as deadline:
                first = await chunks.__anext__()  # {} once the replica accepted the request, else its ApiError
        except TimeoutError:
            if not deadline.expired():
                raise
            chunks.cancel()
            raise self.timed_out() from None
        except Exception as e:
            raise self.refused(served, e) from e
        if isinstance(first, ApiError):
            raise first
        return StreamingResponse(_events(chunks, ends, self.timed_out()), media_type="text/event-stream")


async def _events(chunks, ends: float, timed_out: ApiError) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    finished = False
    try:
        while True:
            try:  # (each wait is timed, not the generator's body: a deadline must not fire inside a yield)
                chunk = await asyncio.wait_for(chunks.__anext__(), max(ends - loop.time(), 0))
            except StopAsyncIteration:
                break
            except TimeoutError:  # mid-stream the status is sent already: the deadline is reported in the stream
                yield f"data: {json.dumps(timed_out.body())}\n\n"
                return  # (not finished: its rows are stopped below)
            yield f"data: {json.dumps(chunk)}\n\n"
        finished = True
    except Exception as e:  # mid-stream the status is sent already: report in the stream, as OpenAI does
        finished = True
        yield f"data: {json.dumps(api_error(e).body())}\n\n"
        return
    finally:
        if not finished:  # the client went away, or the deadline passed: stop its rows in the model's batch
            chunks.cancel()
    yield "data: [DONE]\n\n"


def api_error(error: Exception) -> ApiError:
    """The ApiError to answer for an exception from a model replica or its handle."""
    from ray.serve.exceptions import BackPressureError

    for candidate in (error, getattr(error, "cause", None)):
        if isinstance(candidate, ApiError):
            return candidate
        if isinstance(candidate, BackPressureError):
            return ApiError(503, "the model is overloaded (its request queue is full); retry shortly")
    # The exception's text stays in the logs: it can name paths, hosts or other internals.
    logging.getLogger("ray.serve").warning("a model call failed", exc_info=error)
    return ApiError(500, f"the model failed ({type(error).__name__}); the server's log has the details")


def api_key_digest(config: AppConfig) -> str | None:
    key = os.environ.get(config.api_key_env)
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def build_app(args: AppConfig) -> Application:
    """The typed app builder (`import_path: serving.app:build_app`, `args:` = an AppConfig)."""
    from gen_jobs.core import checkpoint, storage

    config = AppConfig.model_validate(args) if isinstance(args, dict) else args
    models, handles, checkpoints = [], {}, {}
    for spec in config.models:
        if config.wait_for_training_s:  # deployed with (or before) its training jobs, as `kubectl apply -k k8s/` does
            checkpoint.wait_until_trained(spec.checkpoint, config.wait_for_training_s,
                                          log=logging.getLogger("ray.serve").warning)
        uri = checkpoint.latest(spec.checkpoint)
        if not storage.is_s3(uri):
            uri = str(Path(uri).resolve())  # replicas may run in another working directory
        family = checkpoint.read_recipe(uri).family
        if api_module(family) is None:
            raise UserError(f"model {spec.name}: the {family} family has no HTTP API yet")
        deployment = ModelServer.options(
            name=f"model-{spec.name}",
            ray_actor_options={"num_cpus": spec.num_cpus, "num_gpus": spec.gpu},
            autoscaling_config=spec.autoscaling.model_dump(),
            max_ongoing_requests=spec.max_ongoing_requests,
            max_queued_requests=spec.max_queued_requests,
        )
        handles[spec.name] = deployment.bind(spec.name, family, uri, spec.gpu > 0, spec.batching.max_batch_size,
                                             spec.batching.batch_wait_timeout_s, config.limits.model_dump())
        models.append({"name": spec.name, "family": family})
        checkpoints[spec.name] = uri  # what a batch naming this model is answered with (serving.batch_job)
    gateway = Gateway.options(
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        max_queued_requests=config.ingress.max_queued_requests,
        ray_actor_options={"num_cpus": 0},  # parsing and routing only: no CPU held back from the samplers
    )
    # Only the key's SHA-256 travels into the deployment's arguments, never the key.
    return gateway.bind(models, handles, config.limits.model_dump(), api_key_digest(config), batch_storage(config),
                        checkpoints, {"workers": config.batch_workers, "rows_per_shard": config.batch_rows_per_shard})
