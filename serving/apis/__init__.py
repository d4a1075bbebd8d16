"""One module per kind of HTTP API; each model family maps to one.

An API module holds its pydantic request schemas and
    KIND                          "text", "image", ...: what the routes check a model against
    ENDPOINTS                     its JSON routes as `Endpoint`s: URL, body schema, the checks made before
                                  a replica sees a request (the online route and a batch line both use them)
    add_routes(app, gateway)      its FastAPI routes (in the ingress)
    describe(sampler)             details listed by GET /v1/models (in the model's replica)
    async rows(sampler, request, limits)   request -> the sampler's batch (in the replica; ApiError on bad
                                  input; parsing and tokenising off the event loop, within `limits`)
    respond(sampler, request, out, model)   sampler output -> the response body
and, for APIs that stream, a `Stream` class (text.Stream). Batching, limits,
auth, errors and metrics are shared (serving.app, serving.model_server); a new
family (music, style transfer) adds one module here and names it in its
descriptor's `serve_api`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import model_validator

from gen_jobs.core import registry
from gen_jobs.core.recipes import StrictModel

MAX_SEED = 2**63 - 1  # seeds are int64, like a dataset's seed column
MAX_TOP_K = 2**31 - 1  # more than any vocabulary: the same as top_k off


class HttpBody(StrictModel):
    """Base of every HTTP request body: unknown fields are refused, and so is text that is not Unicode.

    JSON can carry a lone surrogate ("\\ud800"), which no tokenizer or encoder
    accepts; it is a 400 here rather than a 500 deep in a replica.
    """

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        def check(value: Any) -> None:
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(f"text holds {value[e.start]!r} at {e.start}, which is not a Unicode character "
                                     "(a lone surrogate); send valid UTF-8 text") from None
            elif isinstance(value, dict):
                for key, item in value.items():
                    check(key)
                    check(item)
            elif isinstance(value, list):
                for item in value:
                    check(item)

        check(data)
        return data


def choice_seed(seed: int, k: int) -> int:
    """The seed of choice (or image) k of a request with `seed`: seed + k, wrapped into int64."""
    return (seed + k) % (MAX_SEED + 1)


def api_module(family: str) -> ModuleType | None:
    """The API module a family's descriptor names (gen_jobs.core.family.Family.serve_api), or None."""
    name = registry.get(family).serve_api
    return importlib.import_module(name) if name else None


def all_api_modules() -> list[ModuleType]:
    names = {registry.get(f).serve_api for f in registry.names()} - {None}
    return [importlib.import_module(name) for name in sorted(names)]


@dataclass(frozen=True)
class Endpoint:
    """One JSON POST route of an API module.

    `body` is its request schema; `check(body, limits)` makes the checks that need no model (limits
    on n, sizes, tokens) and returns the body as the replica takes it (e.g. chat's
    max_completion_tokens as max_tokens), or raises ApiError. The route and a batch line
    (gen_jobs.data.requests) both validate with `body` and then call `check`: one code path.
    """

    url: str
    kind: str
    body: type[HttpBody]
    check: Callable[[Any, Any], Any]


def endpoints() -> dict[str, tuple[Endpoint, ModuleType]]:
    """{url: (its Endpoint, its API module)} of every JSON route raygen serves."""
    return {e.url: (e, api) for api in all_api_modules() for e in getattr(api, "ENDPOINTS", ())}
