"""One module per kind of HTTP API; each model family maps to one.

An API module holds its pydantic request schemas and
    KIND                          "text", "image", ...: what the routes check a model against
    add_routes(app, gateway)      its FastAPI routes (in the ingress)
    describe(sampler)             details listed by GET /v1/models (in the model's replica)
    rows(sampler, request)        request -> the sampler's batch (in the replica; ApiError on bad input)
    respond(sampler, request, out, model)   sampler output -> the response body
and, for APIs that stream, a `Stream` class (text.Stream). Batching, limits,
auth, errors and metrics are shared (serving.app, serving.model_server); a new
family (music, style transfer) adds one module here and one line below.
"""

from __future__ import annotations

import importlib
from types import ModuleType

API_FOR_FAMILY: dict[str, str] = {
    "dcgan": "serving.apis.images",
    "gpt": "serving.apis.text",
}


def api_module(family: str) -> ModuleType:
    return importlib.import_module(API_FOR_FAMILY[family])


def all_api_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in sorted(set(API_FOR_FAMILY.values()))]
