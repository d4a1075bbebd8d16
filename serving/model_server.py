"""One served model: a Serve deployment wrapping its family's own Sampler with `@serve.batch`.

The same Sampler class writes the Ray Data shards, so a request and a dataset
row with the same seed (and settings) get the same sample. Requests are
validated and turned into sampler rows one by one (a bad request fails alone),
their inputs parsed off the event loop within the server's limits (prompts
tokenised, images decoded, primers parsed: once per request, whatever its n),
then their rows are batched: up to `max_batch_size` rows, waiting at most
`batch_wait_timeout_s` for a batch to fill. The sampler runs in a worker
thread so the replica keeps accepting requests, and forming the next batch,
while a batch computes. A sampler that works in steps (`stream`: text a token
at a time, diffusion a denoising step at a time) is run a step at a time, so the
rows of a client that leaves are stopped at the next step.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import numpy as np
from ray import serve

from gen_jobs.core import checkpoint, metrics, registry
from serving.apis import api_module
from serving.config import Limits
from serving.errors import ApiError


def count_rows(batches: list[dict[str, np.ndarray]]) -> int:
    """Batch size in sampler rows (a request with n=4 is four rows), for @serve.batch."""
    return sum(len(b["seed"]) for b in batches)


def concat(batches: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Several requests' rows as one sampler batch, and where each request's rows start."""
    starts = np.cumsum([0] + [len(b["seed"]) for b in batches]).tolist()
    merged = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    return merged, starts


def split_rows(batch: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(batch["seed"])
    return [{key: col[i: i + size] for key, col in batch.items()} for i in range(0, n, size)]


CANCELLED_KEPT = 4096  # far more than the requests one replica's batches hold at once (max_ongoing_requests)


class RecentIds:
    """A set of request ids that keeps the newest `limit` of them."""

    def __init__(self, limit: int):
        self.limit = limit
        self._ids: dict[str, None] = {}  # insertion-ordered

    def add(self, request_id: str) -> None:
        self._ids.pop(request_id, None)
        self._ids[request_id] = None
        while len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]

    def discard(self, request_id: str) -> None:
        self._ids.pop(request_id, None)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


@serve.deployment
class ModelServer:
    def __init__(self, name: str, family: str, checkpoint_uri: str, gpu: bool, max_batch_size: int,
                 batch_wait_timeout_s: float, limits: dict):
        self.name, self.family = name, family
        self.limits = Limits(**limits)
        self.api = api_module(family)
        pinned = checkpoint.pin(checkpoint_uri)  # read once: the sampler's files, recipe and the weights' digest
        with checkpoint.materialise(pinned) as folder:  # the sampler holds what it loaded; the folder can go
            self.sampler = registry.get(family).load("sampler")(folder, "cuda" if gpu else "cpu", pinned.recipe)
        self.weights_sha256 = pinned.sha256
        self.max_batch_size = max_batch_size
        # Streaming requests whose client went away while their rows decode. An id is dropped when its rows
        # end; one cancelled before its rows reached a batch never is, hence the bound (oldest out first).
        self.cancelled = RecentIds(CANCELLED_KEPT)
        self.rows_cancelled = 0  # rows ended early because nobody was listening any more
        self.metrics, self.tags = metrics.serve(), {"model": name}  # (gen_jobs.core.metrics)
        for batched in (self._sample, self._sample_steps):
            batched.set_max_batch_size(max_batch_size)
            batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def stats(self) -> dict:
        """Counters of this replica (for operators and tests)."""
        return {"rows_cancelled": self.rows_cancelled}

    def describe(self) -> dict:
        # The checkpoint's digest, not its location: paths and bucket names are the operator's business.
        return {"family": self.family, "kind": self.api.KIND,
                "weights_sha256": self.weights_sha256, **self.api.describe(self.sampler)}

    async def generate(self, request) -> dict | ApiError:
        # A client's mistake is returned, not raised: replica logs keep tracebacks for real failures.
        try:
            rows = await self.api.rows(self.sampler, request, self.limits)
        except ApiError as e:
            return e
        # A request larger than a batch goes in several (concurrent) pieces.
        if not hasattr(self.sampler, "stream"):  # one sampler call per batch (DCGAN images: milliseconds)
            parts = await asyncio.gather(*(self._sample(part) for part in split_rows(rows, self.max_batch_size)))
        else:  # step by step (tokens, denoising steps), in step batches, so a client that leaves frees its rows
            request_id = uuid.uuid4().hex
            rows["_request"] = np.full(len(rows["seed"]), request_id, dtype=object)
            try:
                parts = await asyncio.gather(*(self._decode(part) for part in split_rows(rows, self.max_batch_size)))
            except asyncio.CancelledError:  # the client disconnected (Serve cancels the call)
                self.cancelled.add(request_id)
                raise
        out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        return await asyncio.to_thread(self.api.respond, self.sampler, request, out, self.name)  # encoding files

    async def _decode(self, part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A part's output columns, decoded step by step in `_sample_steps`' batches."""
        last = None
        async for state in self._sample_steps(part):
            last = state
        return self.sampler.output(part, last)

    async def generate_stream(self, request) -> AsyncIterator[dict | ApiError]:
        try:
            rows = await self.api.rows(self.sampler, request, self.limits)
        except ApiError as e:
            yield e
            return
        stream = self.api.Stream(self.sampler, request, self.name)
        request_id = uuid.uuid4().hex
        rows["_request"] = np.full(len(rows["seed"]), request_id, dtype=object)  # which rows to stop if it is cancelled
        yield {}  # the request is valid: the caller may start its response
        try:
            for first, part in enumerate(split_rows(rows, self.max_batch_size)):
                async for state in self._sample_steps(part):
                    for chunk in stream.chunks(state, first * self.max_batch_size):
                        yield chunk
        except (asyncio.CancelledError, GeneratorExit):  # the client disconnected (Serve cancels the call)
            self.cancelled.add(request_id)
            raise
        for chunk in stream.last_chunks():
            yield chunk

    @serve.batch(batch_size_fn=count_rows)
    async def _sample(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        merged, starts = concat(batches)
        self.metrics.batch_rows.observe(starts[-1], self.tags)
        out = await asyncio.to_thread(self.sampler, merged)
        return [{key: col[a:b] for key, col in out.items()} for a, b in zip(starts, starts[1:])]

    @serve.batch(batch_size_fn=count_rows)
    async def _sample_steps(self, batches: list[dict[str, np.ndarray]]) -> AsyncIterator[list]:
        """Per step (a token, a denoising step), each request's rows (snapshots of their state: anything with a
        finish_reason); StopIteration ends a request's stream."""
        merged, starts = concat(batches)
        self.metrics.batch_rows.observe(starts[-1], self.tags)
        steps = self.sampler.stream(merged)
        ended = [False] * len(batches)
        while (rows := await asyncio.to_thread(next, steps, None)) is not None:
            out = []
            for r, (a, b) in enumerate(zip(starts, starts[1:])):
                request_id = batches[r]["_request"][0]
                if request_id in self.cancelled:  # nobody is listening: end its rows, so the batch can end sooner
                    for row in rows[a:b]:
                        if row.finish_reason is None:
                            row.finish_reason = "cancelled"
                            self.rows_cancelled += 1
                            self.metrics.rows_cancelled.inc(1, self.tags)
                if ended[r]:
                    out.append(StopIteration)
                    continue
                out.append([row.snapshot() for row in rows[a:b]])
                ended[r] = all(row.finish_reason for row in rows[a:b])
                if ended[r]:
                    self.cancelled.discard(request_id)
            yield out
