"""Music models: POST /v1/music/generations (raygen's own route, shaped like OpenAI's image API).

Request fields: model, n, seed, max_tokens (new tokens per piece; default the
recipe's), response_format ("midi" or "wav"), primer (a base64 MIDI or
MusicXML file whose first `sampling.primer_bars` bars the pieces continue; optional).

Answer (`MusicAnswer`, published in the app's GET /openapi.json): {"created",
"data": [{"b64_json": the base64 MIDI or WAV file, "format", "seed", "num_notes",
"duration_s", "key", "finish_reason"}, ...]}.
Piece k of a request with seed s uses seed s + k; without a primer and
max_tokens, its MIDI equals the `raygen generate` dataset row with that seed
byte for byte (and its WAV the row's `audio` with the recipe's renderer).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
from fastapi import FastAPI
from pydantic import BaseModel, Field

from serving.apis import MAX_SEED, Endpoint, HttpBody, choice_seed
from serving.errors import ApiError

if TYPE_CHECKING:
    from serving.app import Gateway
    from serving.config import Limits

KIND = "music"


class MusicRequest(HttpBody):
    model: str
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="new tokens per piece (REMI: ~2.5 per note)")
    response_format: Literal["midi", "wav"] = "midi"
    primer: str | None = Field(None, description="a base64 MIDI, MusicXML or .mxl file for the pieces to continue "
                                                "(limits.max_primer_*)")
    user: str | None = None  # accepted for compatibility, unused


class MusicPiece(BaseModel):
    b64_json: str = Field(description="the base64 MIDI or WAV file")
    format: Literal["midi", "wav"]
    seed: int = Field(description="the seed this piece was sampled with (request seed + index)")
    num_notes: int = Field(ge=0)
    duration_s: float = Field(ge=0, description="seconds from the start to the last note's end")
    key: str | None = Field(description='the estimated key, e.g. "G major"; null for a piece without notes')
    finish_reason: Literal["stop", "length"]


class MusicAnswer(BaseModel):
    """The answer's published shape: GET /openapi.json lists it, and the route's answers are checked against it."""

    created: int
    data: list[MusicPiece]


def check(body: MusicRequest, limits: Limits) -> MusicRequest:
    if body.n > limits.max_n:
        raise ApiError(400, f"n {body.n} is above this server's limit of {limits.max_n} pieces per request", param="n")
    if body.max_tokens is not None and body.max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens {body.max_tokens} is above this server's limit of {limits.max_tokens}",
                       param="max_tokens")
    return body


ENDPOINTS = (Endpoint("/v1/music/generations", KIND, MusicRequest, check),)


def media_columns(custom_ids: list[str], bodies: list[dict | None]) -> dict[str, pa.Array]:
    """A requests dataset's media (serving.batch_lines): each answer's files, decoded, in `midi` (MIDI bytes) or
    `audio` (HuggingFace Audio named <custom_id>-<k>.wav), as its response_format asked; none for an error."""
    from gen_jobs.data.columns import MEDIA_TYPE

    midi, audio = [], []
    for custom_id, body in zip(custom_ids, bodies):
        files = [(base64.b64decode(piece["b64_json"]), piece["format"]) for piece in (body or {"data": []})["data"]]
        midi.append([data for data, form in files if form == "midi"])
        audio.append([{"bytes": data, "path": f"{custom_id}-{k}.wav"} for k, (data, form) in enumerate(files)
                      if form == "wav"])
    return {"midi": pa.array(midi, pa.list_(pa.binary())), "audio": pa.array(audio, pa.list_(MEDIA_TYPE))}


def add_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/v1/music/generations", response_model=MusicAnswer)
    async def music_generations(body: MusicRequest):
        served = gateway.model(body.model, KIND)
        body = check(body, gateway.limits)
        if body.seed is None:
            body = body.model_copy(update={"seed": secrets.randbelow(MAX_SEED)})
        return await gateway.call(served, body)


# ---------------------------------------------------------------- in the model's replica


def describe(sampler) -> dict:
    return {"context_tokens": sampler.context, "vocabulary": len(sampler.tokenizer),
            "default_max_tokens": sampler.sampling.max_new_tokens, "sample_rate": sampler.recipe.audio.sample_rate}


async def rows(sampler, request: MusicRequest, limits: Limits) -> dict[str, np.ndarray]:
    import asyncio

    from gen_jobs.core.errors import UserError
    from gen_jobs.data.columns import object_column
    from serving.primer import parse_primer

    max_tokens = request.max_tokens or sampler.sampling.max_new_tokens
    if max_tokens >= sampler.context:
        raise ApiError(400, f"max_tokens {max_tokens} must be below this model's context of {sampler.context} tokens",
                       param="max_tokens")
    prompt = [sampler.bos]
    if request.primer is not None:
        try:
            primer = await parse_primer(base64.b64decode(request.primer, validate=True), limits)
        except (binascii.Error, ValueError):
            raise ApiError(400, "primer is not base64", param="primer") from None
        except UserError as e:
            raise ApiError(400, f"primer is not a usable MIDI or MusicXML file: {e}", param="primer") from None
        try:  # tokenised once here; the sampler takes the ids
            prompt = (await asyncio.to_thread(sampler.prompt_ids, [primer], [max_tokens]))[0]
        except UserError as e:
            raise ApiError(400, str(e), param="primer") from None
    return {
        "seed": np.array([choice_seed(request.seed, k) for k in range(request.n)], dtype=np.int64),
        "max_new_tokens": np.full(request.n, max_tokens, dtype=np.int64),
        "prompt_ids": object_column([prompt] * request.n),
        "want_audio": np.full(request.n, request.response_format == "wav"),
    }


def respond(sampler, request: MusicRequest, out: dict[str, np.ndarray], model: str) -> dict:
    files = out["audio"] if request.response_format == "wav" else out["midi"]
    data = [{"b64_json": base64.b64encode(f).decode(), "format": request.response_format, "seed": int(seed),
             "num_notes": int(notes), "duration_s": float(seconds), "key": key, "finish_reason": reason}
            for f, seed, notes, seconds, key, reason in zip(files, out["seed"], out["num_notes"], out["duration_s"],
                                                             out["key"], out["finish_reason"])]
    return {"created": int(time.time()), "data": data}
