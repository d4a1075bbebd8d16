"""OpenAI's Batches API on the Serve app: a batch input file run as a Ray job on the cluster that serves it.

    POST /v1/batches                      {input_file_id, endpoint, completion_window: "24h", metadata}
    GET  /v1/batches[?after&limit]        newest first
    GET  /v1/batches/{batch_id}
    POST /v1/batches/{batch_id}/cancel

A batch is a record in the app's storage (`<storage>/batches/<id>.json`, OpenAI's `Batch`) and a
Ray job (`serving.batch_job`, submission id = the batch id) that validates the input file, runs
what `raygen generate --requests` runs into `<storage>/batches/<id>/data`, and writes the output
and error files as files of the Files API. The job writes the record at each step of OpenAI's
life cycle (validating, in_progress with request_counts as shards finish, finalizing, completed;
failed with `errors`; cancelling, cancelled). The routes read the record, so any replica, or a
restarted app, answers the same; a job that died without saying so (stopped, or failed outside
raygen's code) is seen through Ray's job API and its batch marked failed, with Ray's message.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any, Literal, Protocol

from fastapi import FastAPI, Query
from pydantic import BaseModel, Field

from gen_jobs.core import storage
from serving.apis import HttpBody
from serving.errors import ApiError
from serving.files import FileStore
from serving.records import RecordStore

BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
WINDOW_S = {"24h": 24 * 3600}
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchErrorItem(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchErrorItem] = []


class BatchRecord(BaseModel):
    """OpenAI's `Batch` (fields left unset are left out of the answer, as OpenAI leaves them null)."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = RequestCounts()
    usage: dict | None = None  # tokens of a text batch's answers
    metadata: dict[str, str] | None = None

    def answer(self) -> dict:
        return self.model_dump(exclude_none=True)


class CreateBatch(HttpBody):
    input_file_id: str
    endpoint: str
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(None, max_length=16)


class BatchStore(RecordStore[BatchRecord]):
    """The batches under `<root>/batches/`: the record at `<id>.json`, the job's dataset and job spec under `<id>/`."""

    def __init__(self, root: str):
        super().__init__(storage.join(root, "batches"), BatchRecord, BATCH_ID, "batch")
        self.root = root

    def update(self, batch_id: str, **changes) -> BatchRecord:
        """The record with `changes`, written back (one writer at a time: the batch's job, or a route
        that finds the job gone)."""
        return self.put(self.get(batch_id).model_copy(update=changes))

    def job_spec_uri(self, batch_id: str) -> str:
        return storage.join(self.uri(batch_id), "job.json")

    def data_uri(self, batch_id: str) -> str:
        return storage.join(self.uri(batch_id), "data")


def now() -> int:
    return int(time.time())


class BatchesHost(Protocol):
    """What the routes need of the gateway (serving.app.Gateway)."""

    files: FileStore
    batches: BatchStore
    models: dict[str, Any]  # name -> a served model with its `kind`
    checkpoints: dict[str, str]  # name -> its checkpoint's URI
    storage_root: str
    batch_job: dict  # the batch job's settings: workers, rows_per_shard


def add_routes(app: FastAPI, gateway: BatchesHost) -> None:
    @app.post("/v1/batches")
    async def create_batch(body: CreateBatch):
        from serving.apis import endpoints

        if body.endpoint not in endpoints():
            raise ApiError(400, f"endpoint {body.endpoint!r} is not one this server runs batches for: "
                                f"{', '.join(sorted(endpoints()))}", param="endpoint")
        await asyncio.to_thread(gateway.files.get, body.input_file_id)  # 404 for an unknown file
        created = now()
        record = BatchRecord(id=f"batch_{uuid.uuid4().hex}", endpoint=body.endpoint, input_file_id=body.input_file_id,
                             completion_window=body.completion_window, status="validating", created_at=created,
                             expires_at=created + WINDOW_S[body.completion_window], metadata=body.metadata)
        spec = {"input": gateway.files.uri(body.input_file_id), "models": gateway.checkpoints,
                "kinds": {name: served.kind for name, served in gateway.models.items()},
                "files_root": gateway.storage_root, **gateway.batch_job}
        await asyncio.to_thread(_start, gateway.batches, record, spec)
        return record.answer()

    @app.get("/v1/batches")
    async def list_batches(after: str | None = None, limit: int = Query(20, ge=1, le=100)):
        records = sorted(await asyncio.to_thread(gateway.batches.all), key=lambda r: (r.created_at, r.id),
                         reverse=True)
        if after is not None:
            ids = [r.id for r in records]
            records = records[ids.index(after) + 1:] if after in ids else []
        page = [await asyncio.to_thread(refreshed, gateway.batches, r) for r in records[:limit]]
        answer = {"object": "list", "data": [r.answer() for r in page], "has_more": len(records) > limit}
        if page:
            answer.update(first_id=page[0].id, last_id=page[-1].id)
        return answer

    @app.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str):
        record = await asyncio.to_thread(gateway.batches.get, batch_id)
        return (await asyncio.to_thread(refreshed, gateway.batches, record)).answer()

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str):
        record = await asyncio.to_thread(gateway.batches.get, batch_id)
        if record.status in ("validating", "in_progress"):  # the job sees it between shards and stops
            record = await asyncio.to_thread(gateway.batches.update, batch_id, status="cancelling",
                                             cancelling_at=now())
        elif record.status not in ("cancelling", "cancelled"):
            raise ApiError(400, f"batch {batch_id} is {record.status}: only a validating or running batch can be "
                                "cancelled", param="batch_id")
        return record.answer()


def _start(batches: BatchStore, record: BatchRecord, spec: dict) -> None:
    """Write the record and the job's spec, then submit the batch's Ray job (submission id = batch id)."""
    import sys

    from ray.job_submission import JobSubmissionClient

    batches.put(record)
    storage.write_bytes_atomic(batches.job_spec_uri(record.id), json.dumps(spec).encode())
    try:
        client = JobSubmissionClient(_cluster_address())
        client.submit_job(entrypoint=f"{sys.executable} -m serving.batch_job {batches.root} {record.id}",
                          submission_id=record.id, metadata={"raygen_batch": record.id})
    except Exception as e:  # the cluster's job API refused: the batch fails at once, saying why
        batches.update(record.id, status="failed", failed_at=now(), errors=BatchErrors(data=[BatchErrorItem(
            code="job_not_started", message=f"the batch's Ray job could not be started: {type(e).__name__}: {e}")]))


def _cluster_address() -> str:
    """The Ray cluster this replica runs on (its GCS address: the job client finds the dashboard from it)."""
    import ray

    return ray.get_runtime_context().gcs_address


def refreshed(batches: BatchStore, record: BatchRecord) -> BatchRecord:
    """The record, marked failed (or cancelled) when its Ray job ended without finishing it."""
    if record.status not in RUNNING:
        return record
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        info = JobSubmissionClient(_cluster_address()).get_job_info(record.id)
    except Exception:  # the job API is unreachable for a moment: the record as it is
        return record
    if info.status not in (JobStatus.FAILED, JobStatus.STOPPED):
        return record
    latest = batches.get(record.id)  # the job may have written its last step since
    if latest.status not in RUNNING:
        return latest
    if latest.status == "cancelling":
        return batches.update(record.id, status="cancelled", cancelled_at=now())
    return batches.update(record.id, status="failed", failed_at=now(), errors=BatchErrors(data=[BatchErrorItem(
        code="job_failed", message=f"the batch's Ray job ended ({info.status.value}): {info.message or 'no message'}; "
                                   f"its log: `ray job logs {record.id}`")]))
