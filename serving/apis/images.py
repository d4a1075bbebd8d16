"""Image models over the OpenAI API: POST /v1/images/generations.

Request fields: model, prompt (what a text-to-image model draws; accepted and
unused by the others), n, response_format ("b64_json"; URLs are not offered),
size ("WxH"; default: the model's own size, other sizes are nearest-neighbour
resized), seed, and the raygen extension `label` (a class index, for
class-conditional models; omitted: drawn from the seed, as in a dataset).

Each returned image carries the `seed` (and, for a class-conditional model, the
`label`) it was sampled with. Image k of a request with seed s uses seed s + k;
the PNG equals the `raygen generate` dataset row with that seed (and label, or
prompt) byte for byte.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from fastapi import FastAPI
from pydantic import Field, field_validator

from serving.apis import MAX_SEED, Endpoint, HttpBody, choice_seed
from serving.errors import ApiError

if TYPE_CHECKING:
    from serving.app import Gateway
    from serving.config import Limits

KIND = "image"


class ImageAnswer(HttpBody):
    """The fields every image route shares: how many images, in which format, at which size."""

    n: int = Field(1, ge=1)
    response_format: str = "b64_json"
    size: str | None = Field(None, pattern=r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$", description="WxH, e.g. 64x64")
    user: str | None = None  # accepted for compatibility, unused

    @field_validator("response_format")
    @classmethod
    def _b64_only(cls, v: str) -> str:
        if v != "b64_json":
            raise ValueError('only "b64_json" is offered: this server keeps no image files to link to')
        return v

    def pixels(self) -> tuple[int, int] | None:
        if self.size is None:
            return None
        width, height = (int(x) for x in self.size.split("x"))
        return width, height

    def check_limits(self, limits) -> None:
        """ApiError when n or size is above the server's limits (serving.config.Limits)."""
        if self.n > limits.max_n:
            raise ApiError(400, f"n {self.n} is above this server's limit of {limits.max_n} images per request", param="n")
        size = self.pixels()
        if size and size[0] * size[1] > limits.max_image_pixels:
            raise ApiError(400, f"size {self.size} has {size[0] * size[1]:,} pixels; this server allows at most "
                                f"{limits.max_image_pixels:,}", param="size")


class ImageRequest(ImageAnswer):
    model: str
    prompt: str = ""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    label: int | None = Field(None, ge=0, le=MAX_SEED, description="raygen extension: the class to draw")


def check(body: ImageRequest, limits: Limits) -> ImageRequest:
    body.check_limits(limits)
    return body


ENDPOINTS = (Endpoint("/v1/images/generations", KIND, ImageRequest, check),)


def media_columns(custom_ids: list[str], bodies: list[dict | None]) -> dict[str, pa.Array]:
    """A requests dataset's media (serving.batch_lines): each answer's PNGs, decoded, as `images` (HuggingFace
    Images named <custom_id>-<k>.png; none for an error, whose body is None)."""
    from gen_jobs.data.columns import MEDIA_TYPE

    images = [[{"bytes": base64.b64decode(image["b64_json"]), "path": f"{custom_id}-{k}.png"}
               for k, image in enumerate(body["data"])] if body else [] for custom_id, body in zip(custom_ids, bodies)]
    return {"images": pa.array(images, pa.list_(MEDIA_TYPE))}


def add_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/v1/images/generations")
    async def images_generations(body: ImageRequest):
        served = gateway.model(body.model, KIND)
        body = check(body, gateway.limits)
        if body.seed is None:
            body = body.model_copy(update={"seed": secrets.randbelow(MAX_SEED)})
        return await gateway.call(served, body)


# ---------------------------------------------------------------- in the model's replica


def describe(sampler) -> dict:
    cfg = sampler.recipe.model
    return {"image_size": cfg.image_size, "channels": cfg.channels,
            "num_classes": cfg.num_classes if cfg.conditional else None}


async def rows(sampler, request: ImageRequest, limits: Limits) -> dict[str, np.ndarray]:
    cfg = sampler.recipe.model
    if request.label is not None:
        if not cfg.conditional:
            raise ApiError(400, f"model {request.model} is unconditional: leave out label", param="label")
        if request.label >= cfg.num_classes:
            raise ApiError(400, f"label {request.label} is out of range: this model draws classes 0-{cfg.num_classes - 1}",
                           param="label")
    return {
        "seed": np.array([choice_seed(request.seed, k) for k in range(request.n)], dtype=np.int64),
        "label": np.full(request.n, -1 if request.label is None else request.label, dtype=np.int64),
        "prompt": np.full(request.n, request.prompt, dtype=object),  # read by text-to-image models only
    }


def respond(sampler, request: ImageRequest, out: dict[str, np.ndarray], model: str) -> dict:
    from gen_jobs.data.images import encode_png

    images = out["image"]  # uint8 n x S x S x C
    size = request.pixels()
    if size and size != (images.shape[2], images.shape[1]):
        images = resize(images, size)
    conditional = sampler.recipe.model.conditional
    data = []
    for png, seed, label in zip(encode_png(images), out["seed"], out["label"]):
        image = {"b64_json": base64.b64encode(png).decode(), "seed": int(seed)}
        data.append({**image, "label": int(label)} if conditional else image)
    return {"created": int(time.time()), "data": data}


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 B x H x W x C -> B x height x width x C, nearest neighbour (keeps pixels crisp, deterministic)."""
    from PIL import Image

    out = []
    for img in images:
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        arr = np.asarray(pil.resize(size, Image.Resampling.NEAREST))
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out)
