"""Style transfer over the OpenAI API: POST /v1/images/edits, a multipart form or a JSON body, as OpenAI's own.

Form fields: image (the file to stylise; required), model, prompt (a style's
name in the model's recipe), n, response_format ("b64_json"; URLs are not
offered), size ("WxH": the answer is resized to it; default: the input's own
size, shrunk above the recipe's stylize.max_pixels), user, and the raygen
extension `style` (a style index; wins over `prompt`). So the official client's
`client.images.edit(model=..., image=open("photo.jpg", "rb"), prompt="flower")` works.

The JSON body (OpenAI's EditImageBodyJsonParam, and what a batch line of this route holds) has the
same fields with the picture in `images`: one reference, a data URL (`{"image_url":
"data:image/png;base64,..."}`); this server fetches no URLs and keeps no uploaded images by file id.
Both bodies become one `EditRequest` and are checked alike (`check`).

Each returned image carries its `style` index and `style_name`. Stylising is
deterministic: the PNG equals the `raygen generate --input` row of the same
image file in the same style, byte for byte (n > 1 returns n such copies).
A part that is not an image is a 400 naming the `image` field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import TYPE_CHECKING

import numpy as np
from fastapi import FastAPI, Request
from pydantic import Field

from serving.apis import Endpoint, HttpBody
from serving.apis.images import ImageAnswer, media_columns  # noqa: F401  (an edit's answer is images too)
from serving.errors import ApiError

if TYPE_CHECKING:
    from serving.app import Gateway
    from serving.config import Limits

KIND = "image_edit"
_decoding = asyncio.Semaphore(1)  # (bound to the replica's event loop at first use)
FORM_FIELDS = ("model", "prompt", "n", "response_format", "size", "user", "style")


class EditRequest(ImageAnswer):
    model: str
    image: bytes = Field(repr=False)
    prompt: str = ""
    style: int | None = Field(None, ge=0, description="raygen extension: the style's index")


class ImageReference(HttpBody):
    """OpenAI's ImageRefParam: a picture by URL (here: a data URL) or by uploaded file id (not offered here)."""

    image_url: str | None = None
    file_id: str | None = None


class EditJsonRequest(ImageAnswer):
    """OpenAI's JSON edit body: the picture as a data URL in `images`."""

    model: str
    images: list[ImageReference] = Field(min_length=1)
    prompt: str = ""
    style: int | None = Field(None, ge=0, description="raygen extension: the style's index")


def check(body: EditJsonRequest | EditRequest, limits: Limits) -> EditRequest:
    """The request a replica stylises, from either body, within the server's limits; ApiError otherwise."""
    if isinstance(body, EditJsonRequest):
        body = EditRequest(image=_data_url_bytes(body.images), **body.model_dump(exclude={"images"}))
    body.check_limits(limits)
    return body


def _data_url_bytes(images: list[ImageReference]) -> bytes:
    if len(images) != 1:
        raise ApiError(400, f"images holds {len(images)} pictures; a style model stylises one a request (n asks for "
                            "copies)", param="images")
    reference = images[0]
    if reference.file_id is not None or reference.image_url is None:
        raise ApiError(400, "images[0]: send the picture inline as image_url, a data URL "
                            "(data:image/png;base64,...); this server keeps no uploaded images by file id",
                       param="images")
    header, comma, data = reference.image_url.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64") or not comma:
        raise ApiError(400, f"images[0].image_url {reference.image_url[:40]!r}... is not a base64 data URL: this "
                            "server fetches no URLs; send data:image/png;base64,<the file's bytes>", param="images")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as e:
        raise ApiError(400, f"images[0].image_url: its data is not base64 ({e})", param="images") from None


ENDPOINTS = (Endpoint("/v1/images/edits", KIND, EditJsonRequest, check),)


async def read_form(request: Request) -> dict:
    """The form's fields (the image as bytes); ApiError for a body that is not such a form."""
    from starlette.datastructures import UploadFile

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the image as multipart/form-data (a file field `image`), as OpenAI's images.edit "
                            "does, or as JSON with the image as a data URL in images")
    try:
        form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 1)
    except Exception as e:  # starlette's MultiPartException and parser errors: the body is not a usable form
        raise ApiError(400, f"the multipart form could not be read ({e})") from None
    fields = {}
    for key, value in form.multi_items():
        key = "image" if key == "image[]" else key  # the client names a list of images image[]
        if key in fields:
            raise ApiError(400, f"{key} is given twice; send one", param=key)
        if key == "image":
            if not isinstance(value, UploadFile):
                raise ApiError(400, "image must be a file part (an image upload), not text", param="image")
            fields[key] = await value.read()
        elif key not in FORM_FIELDS:
            raise ApiError(400, f"{key} is not a field of this request", param=key)
        elif isinstance(value, UploadFile):
            raise ApiError(400, f"{key} must be text, not a file", param=key)
        else:
            fields[key] = value
    if "image" not in fields:
        raise ApiError(400, "image is required: the picture to stylise, as a file part", param="image")
    return fields


def add_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/v1/images/edits")
    async def images_edits(request: Request):
        from fastapi.exceptions import RequestValidationError
        from pydantic import ValidationError

        from serving.http import describe_validation

        if request.headers.get("content-type", "").startswith("application/json"):
            schema, fields = EditJsonRequest, await read_json(request)
        else:
            schema, fields = EditRequest, await read_form(request)
        try:
            body = schema.model_validate(fields)
        except ValidationError as e:  # answered like a JSON route's mistakes: a 400 naming the field
            raise describe_validation(RequestValidationError(e.errors())) from None
        served = gateway.model(body.model, KIND)
        return await gateway.call(served, check(body, gateway.limits))


async def read_json(request: Request) -> dict:
    try:
        return json.loads(await request.body())
    except ValueError as e:  # (UnicodeDecodeError is one too)
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None


# ---------------------------------------------------------------- in the model's replica


def describe(sampler) -> dict:
    return {"styles": [s.name for s in sampler.recipe.styles], "max_pixels": sampler.recipe.stylize.max_pixels}


async def rows(sampler, request: EditRequest, limits: Limits) -> dict[str, np.ndarray]:
    from gen_jobs.data.columns import object_column
    from gen_jobs.data.images import BadImage, decode_rgb, decoding_cost

    recipe = sampler.recipe
    names = ", ".join(s.name for s in recipe.styles)
    if request.style is not None:
        if request.style >= len(recipe.styles):
            raise ApiError(400, f"style {request.style} is out of range: this model has styles 0-{len(recipe.styles) - 1} "
                                f"({names})", param="style")
        style = request.style
    else:
        style = recipe.style_index(request.prompt.strip())
        if style is None:
            raise ApiError(400, f"prompt {request.prompt[:60]!r} names no style of this model; use one of: {names} "
                                "(or give style: its index)", param="prompt")
    try:
        pixels, size = decoding_cost(request.image, recipe.stylize.max_pixels)  # the header only
        if pixels > limits.max_input_pixels:
            raise BadImage(f"decoding it takes {pixels:,} pixels; this server decodes at most {limits.max_input_pixels:,} "
                           "(limits.max_input_pixels): shrink it first")
        if size > limits.max_input_bytes:
            raise BadImage(f"decoded it holds {size:,} bytes; this server decodes at most {limits.max_input_bytes:,} "
                           "(limits.max_input_bytes): shrink it, or save it with 8 bits per channel")
        # Decoded once, off the event loop, one image at a time per replica (a core's worth, not all of them);
        # its n rows share the pixels.
        async with _decoding:
            image = await asyncio.to_thread(decode_rgb, request.image, recipe.stylize.max_pixels,
                                            recipe.stylize.max_input_pixels)
    except BadImage as e:
        raise ApiError(400, f"image is not a usable picture: {e}", param="image") from None
    return {
        "seed": np.arange(request.n, dtype=np.int64),  # unused: the style is given, and stylising draws nothing
        "input": object_column([image] * request.n),
        "label": np.full(request.n, style, dtype=np.int64),
    }


def respond(sampler, request: EditRequest, out: dict[str, np.ndarray], model: str) -> dict:
    from gen_jobs.data.images import encode_png
    from serving.apis.images import resize

    size = request.pixels()
    data = []
    for image, style in zip(out["image"], out["style"]):
        if size and size != (image.shape[1], image.shape[0]):
            image = resize(image[None], size)[0]
        data.append({"b64_json": base64.b64encode(encode_png(image[None])[0]).decode(),
                     "style": int(style), "style_name": sampler.recipe.styles[int(style)].name})
    return {"created": int(time.time()), "data": data}
