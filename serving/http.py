"""The gateway's FastAPI app: shared routes, guards and error answers; each API adds its routes.

    GET  /                          the playground page (serving.playground; no API key needed)
    GET  /healthz                   liveness (no API key needed)
    GET  /v1/models                 the served models, OpenAI's list shape
    POST /v1/completions, /v1/chat/completions      serving.apis.text
    POST /v1/images/generations                     serving.apis.images
    POST /v1/images/edits (multipart form or JSON)  serving.apis.edits
    POST /v1/music/generations                      serving.apis.music

Every refusal is an OpenAI-style JSON error naming the field at fault: 400 for
a bad body (malformed JSON, wrong types, limits), 401 without the API key, 404
for an unknown model, 411/413 for a missing or too large body, 503 when a
model's queue is full.
"""

from __future__ import annotations

import logging
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving import batches, files, playground, request_metrics
from serving.apis import all_api_modules
from serving.config import Limits
from serving.errors import ApiError


class Gateway(Protocol):
    """What the shared routes here use of serving.app.Gateway (not imported: that module imports this one)."""

    models: dict
    limits: Limits
    created: int
    api_key_sha256: str | None  # None: a keyless server

    def authorized(self, header: str | None) -> bool: ...

    async def describe(self, served) -> dict: ...


logger = logging.getLogger("ray.serve")
OPEN_PATHS = playground.OPEN_PATHS | {"/healthz"}  # the page asks for the key; the liveness probe has none


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def describe_validation(error: RequestValidationError) -> ApiError:
    """The first problem of a request body, as a 400 naming its field."""
    problem = error.errors()[0]
    loc = [str(p) for p in problem.get("loc", ()) if p != "body"]
    if problem.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({problem.get('ctx', {}).get('error', 'parse error')})")
    field = ".".join(loc) or None
    message = problem.get("msg", "invalid value").removeprefix("Value error, ")
    if field is None and problem.get("type") == "value_error":  # a check of the whole body
        return ApiError(400, message)
    if field is None:
        return ApiError(400, "the request body must be a JSON object (send it with Content-Type: application/json)")
    if problem.get("type") == "missing":
        return ApiError(400, f"{field} is required", param=field)
    if problem.get("type") == "extra_forbidden":
        return ApiError(400, f"{field} is not a field of this request", param=field)
    return ApiError(400, f"{field}: {message} (got {quoted(problem.get('input'))})" if field else message, param=field)


QUOTE_CHARS = 200  # an error quotes this much of a bad value: a 900 KB value is not echoed back


def quoted(value) -> str:
    """repr(value), cut to QUOTE_CHARS characters with how much was left out."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}... ({len(text):,} characters)"


def foreign_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's Origin header names a page of another origin than this server (Host)."""
    if not origin:
        return False
    from urllib.parse import urlparse

    return origin == "null" or urlparse(origin).netloc.lower() != (host or "").lower()


FORM_SLACK = 64 * 1024  # a file upload's multipart framing and fields, besides the file itself


def http_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="raygen", description="OpenAI-compatible sampling from raygen's model families")
    limits = gateway.limits

    @app.middleware("http")
    async def guard(request: Request, call_next):
        # Every route but the liveness probe and the playground's files needs the key (the API docs too), whatever
        # route prefix the app is served under (Serve passes it as the ASGI root_path).
        path = request.url.path.removeprefix(request.scope.get("root_path", "").rstrip("/"))
        if path not in OPEN_PATHS and not gateway.authorized(request.headers.get("authorization")):
            return error_response(ApiError(401, "a valid API key is required: send `Authorization: Bearer <key>`"))
        if request.method == "POST" and gateway.api_key_sha256 is None and \
                foreign_origin(request.headers.get("origin"), request.headers.get("host")):
            # A web page elsewhere may send a "simple" form post here without a CORS preflight, and a keyless
            # server would run it; browsers always name the page's origin, other clients none. (With a key,
            # such a post has no key: a browser never adds one by itself.)
            return error_response(ApiError(403, "this server does not take requests from web pages of another "
                                                "origin; call it from its own playground or from a program"))
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return error_response(ApiError(411, "send the request body with a Content-Length header"))
            largest = limits.max_file_bytes + FORM_SLACK if path == "/v1/files" else limits.max_body_bytes
            if int(length) > largest:
                return error_response(ApiError(
                    413, f"the request body has {int(length):,} bytes; this server accepts at most {largest:,}"))
        return await call_next(request)

    app.add_middleware(request_metrics.MeasuredAnswers, router=app.router)  # added last: the outermost

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, error: ApiError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def on_bad_body(_: Request, error: RequestValidationError):
        return error_response(describe_validation(error))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException):
        message = f"no route {request.method} {request.url.path}" if error.status_code in (404, 405) else str(error.detail)
        if error.status_code == 400 and "parsing the body" in message:  # FastAPI's words for json.loads failing
            message = "the request body could not be parsed as JSON (malformed, or nested too deeply)"
        return JSONResponse(ApiError(error.status_code, message).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def on_bug(_: Request, error: Exception):
        logger.exception("unexpected error in the gateway")
        return error_response(ApiError(500, f"internal error: {type(error).__name__}"))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}  # no model names: this route needs no key (GET /v1/models lists them, with it)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [await _model_card(gateway, m) for m in gateway.models.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        served = gateway.models.get(name)
        if served is None:
            raise ApiError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
        return await _model_card(gateway, served)

    for api in all_api_modules():
        api.add_routes(app, gateway)
    files.add_routes(app, gateway)
    batches.add_routes(app, gateway)
    keyless = gateway.api_key_sha256 is None  # (then /v1/models names them to anyone anyway)
    playground.add_routes(app, [(m.name, m.kind) for m in gateway.models.values()] if keyless else None)
    return app


async def _model_card(gateway: Gateway, served) -> dict:
    # The request limits ride along so a client (the playground) can offer values the server accepts.
    limits = gateway.limits.model_dump()  # every limit a request meets, so a client knows them before it asks
    return {"id": served.name, "object": "model", "created": gateway.created, "owned_by": "raygen",
            "raygen": {**await gateway.describe(served), "limits": limits}}
