"""Batch lines answered as the online routes answer them: the answerer of `raygen generate --requests`.

    used by gen_jobs.data.shard_writer (named by gen_jobs.generate: the data face imports no serving code)

A line's body is validated by its route's own schema and checks (serving.apis.Endpoint), turned
into sampler rows by its API module (`rows`), sampled with the rows of the other lines in the
recipe's micro-batches (the sampler's rows do not depend on their neighbours), and answered by
the API module (`respond`): the code path of an online request, with the lines of a shard as the
batch. A line the route would refuse gets the route's error, with its status code.
"""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pyarrow as pa
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from gen_jobs.data.requests import Answer
from serving.apis import api_module, endpoints
from serving.config import Limits
from serving.errors import ApiError
from serving.http import describe_validation
from serving.model_server import concat


class Answerer:
    """Answers request lines with a family's sampler, through its HTTP API modules (serving.apis)."""

    def __init__(self, sampler, family: str, input_sha256: str, micro_batch: int):
        self.sampler = sampler
        self.api = api_module(family)  # the family's own API module: its kind of answers and its media columns
        self.kind = self.api.KIND
        self.endpoints = endpoints()
        self.limits = Limits()  # the server's defaults: a line may ask what the online route allows
        self.input_sha256 = input_sha256
        self.micro_batch = micro_batch

    def __call__(self, lines: list[dict], seeds: np.ndarray) -> list[Answer]:
        """Each line's answer; a line whose body has no seed gets the row's (`seeds`)."""
        return asyncio.run(self._answer(lines, seeds))

    async def _answer(self, lines: list[dict], seeds: np.ndarray) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(lines)
        ready = []  # (line index, API module, request, its sampler rows)
        for i, (line, seed) in enumerate(zip(lines, seeds)):
            try:
                api, request = self.request(line, int(seed))
                ready.append((i, api, request, await api.rows(self.sampler, request, self.limits)))
            except ApiError as e:
                answers[i] = Answer(e.status, e.body())
        if ready:
            merged, starts = concat([rows for *_, rows in ready])
            out = self.sample(merged)
            for (i, api, request, _), a, b in zip(ready, starts, starts[1:]):
                part = {key: column[a:b] for key, column in out.items()}
                body = await asyncio.to_thread(api.respond, self.sampler, request, part, request.model)
                answers[i] = Answer(200, self.settled(body, lines[i]["custom_id"]))
        return answers

    def media_columns(self, lines: list[dict], answers: list[Answer]) -> dict[str, pa.Array]:
        """The answers' files as the dataset's media columns (the API module's `media_columns`; none for text)."""
        columns = getattr(self.api, "media_columns", None)
        if columns is None:
            return {}
        return columns([line["custom_id"] for line in lines], [a.body if a.status_code == 200 else None for a in answers])

    def request(self, line: dict, seed: int):
        """(API module, the validated request) for a line, or ApiError as the online route would answer."""
        found = self.endpoints.get(line["url"])
        if found is None:
            raise ApiError(404, f"{line['url']} is not a route a batch line may name; they are "
                                f"{', '.join(sorted(self.endpoints))}", param="url")
        endpoint, api = found
        if endpoint.kind != self.kind:
            raise ApiError(400, f"this is a {self.kind} model; it does not serve {line['url']}", param="url")
        try:
            request = endpoint.body.model_validate(line["body"])
        except ValidationError as e:  # answered as the route answers a bad JSON body: a 400 naming the field
            raise describe_validation(RequestValidationError(e.errors())) from None
        request = endpoint.check(request, self.limits)
        if getattr(request, "stream", False):
            raise ApiError(400, "stream is not offered in a batch: every answer is written whole", param="stream")
        if "seed" in type(request).model_fields and request.seed is None:  # (stylising draws nothing: no seed)
            request = request.model_copy(update={"seed": seed})
        return api, request

    def sample(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The sampler's output for `rows`, in micro-batches of the recipe's size (the rows do not depend on it)."""
        count = len(rows["seed"])
        parts = [self.sampler({key: column[i: i + self.micro_batch] for key, column in rows.items()})
                 for i in range(0, count, self.micro_batch)]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def settled(self, body: dict, custom_id: str) -> dict:
        """The answer with its time-dependent fields made a function of the line: `id` from the input's digest
        and the custom_id, `created` 0."""
        if "id" in body:
            prefix = body["id"].split("-", 1)[0]
            body["id"] = f"{prefix}-{line_digest(self.input_sha256, custom_id)}"
        if "created" in body:
            body["created"] = 0
        return body


def line_digest(scope: str, custom_id: str) -> str:
    """32 hex digits naming one request line: a function of its custom_id and its scope (the digest of
    the input file, for an answer's id; the batch's id, for the batch output line's request_id)."""
    return hashlib.sha256(f"{scope}\0{custom_id}".encode()).hexdigest()[:32]
