"""Every answer of every Serve route conforms to OpenAI's published API description.

Typed clients generated from OpenAI's description (Go, Java, TypeScript, Rust)
and validating gateways reject answers the lenient Python client accepts, so
each route's answers are validated here with a JSON Schema 2020-12 validator
against `../shared/openai-openapi/openapi.json` (when that folder is beside the
checkout; else its part raygen's routes use, kept in tests/resources by
tests/scripts/trim_openai_spec.py), with the two adjustments its README names:
`nullable: true` becomes `anyOf [..., null]`, and a streamed chunk may carry
`finish_reason: null` before its choice ends. Which schema an answer must meet
is read from the description's own `paths`, not written here.

raygen's extensions (a choice's `seed`, an image's `label`, the `raygen` object
of a model) are additional properties, which the description allows. The music
route has no OpenAI shape: it is validated against the schema the app itself
publishes at GET /openapi.json. Every 4xx body of every route is OpenAI's
ErrorResponse.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from jsonschema import Draft202012Validator
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import REPO, SERVE_API_KEY
from gen_jobs.core import registry

FULL_SPEC = REPO.parent / "shared" / "openai-openapi" / "openapi.json"
TRIMMED_SPEC = REPO / "tests" / "resources" / "openai-openapi.json"  # scripts/trim_openai_spec.py
STRICT, STREAMED = "urn:openai", "urn:openai-streamed"


def nullable_as_any_of(node):
    """OpenAPI 3.0's `nullable: true` (ignored by a 2020-12 validator) as `anyOf: [schema, {type: null}]`."""
    if isinstance(node, list):
        return [nullable_as_any_of(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: nullable_as_any_of(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node


class Description:
    """An OpenAPI document as a JSON Schema registry: answers are checked against its components."""

    def __init__(self, document: dict, streamed: dict | None = None):
        self.document = document
        registry = Registry().with_resource(STRICT, Resource.from_contents(document, DRAFT202012))
        if streamed is not None:
            registry = registry.with_resource(STREAMED, Resource.from_contents(streamed, DRAFT202012))
        self.registry = registry

    def schema_ref(self, path: str, method: str, content: str = "application/json", status: str = "200") -> str:
        """The component that `paths[path][method]` answers with, e.g. '#/components/schemas/ImagesResponse'."""
        return self.document["paths"][path][method]["responses"][status]["content"][content]["schema"]["$ref"]

    def errors(self, answer, ref: str, resource: str = STRICT) -> list[str]:
        validator = Draft202012Validator({"$ref": f"{resource}{ref}"}, registry=self.registry)
        return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(answer)]

    def check(self, answer, ref: str, what: str, resource: str = STRICT) -> None:
        problems = self.errors(answer, ref, resource)
        assert not problems, f"{what} does not conform to {ref}:\n" + "\n".join(problems[:10])


@pytest.fixture(scope="module")
def openai() -> Description:
    spec = FULL_SPEC if FULL_SPEC.exists() else TRIMMED_SPEC
    strict = nullable_as_any_of(json.loads(spec.read_text()))
    # A completion's stream reuses the plain answer's schema; before a choice ends its chunks say
    # finish_reason null, as the live API does (the description's README names this one exception).
    streamed = copy.deepcopy(strict)
    choice = streamed["components"]["schemas"]["CreateCompletionResponse"]["properties"]["choices"]["items"]
    choice["properties"]["finish_reason"] = {"anyOf": [choice["properties"]["finish_reason"], {"type": "null"}]}
    return Description(strict, streamed)


@pytest.fixture(scope="module")
def raygen_description(server) -> Description:
    """The app's own published description (FastAPI's GET /openapi.json)."""
    answer = httpx.get(f"{server}/openapi.json", headers={"Authorization": f"Bearer {SERVE_API_KEY}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return Description(answer.json())


@pytest.mark.skipif(not FULL_SPEC.exists(), reason=f"OpenAI's full description is not at {FULL_SPEC}")
def test_the_kept_part_of_the_description_is_the_published_one():
    import runpy

    trim = runpy.run_path(str(REPO / "tests" / "scripts" / "trim_openai_spec.py"))["trim"]
    assert json.loads(TRIMMED_SPEC.read_text()) == trim(json.loads(FULL_SPEC.read_text())), (
        "tests/resources/openai-openapi.json is stale: rerun tests/scripts/trim_openai_spec.py")


def events(http: httpx.Client, path: str, body: dict) -> Iterator[dict]:
    """The JSON events of a server-sent event stream, up to `data: [DONE]` (which must end it)."""
    with http.stream("POST", path, json=body) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        done = False
        for line in answer.iter_lines():
            if not line.startswith("data: "):
                continue
            assert not done, "an event came after data: [DONE]"
            if line == "data: [DONE]":
                done = True
            else:
                yield json.loads(line.removeprefix("data: "))
        assert done, "the stream did not end with data: [DONE]"


def test_model_list_and_model_conform(openai, http):
    models = http.get("/v1/models").json()
    openai.check(models, openai.schema_ref("/models", "get"), "GET /v1/models")
    assert {m["id"] for m in models["data"]} >= {"digits", "pydoc", "chorales", "styles", "diffusion"}
    for model in models["data"]:
        one = http.get(f"/v1/models/{model['id']}").json()
        openai.check(one, openai.schema_ref("/models/{model}", "get"), f"GET /v1/models/{model['id']}")
        assert one["raygen"]["family"] in registry.names(), one  # the extension, which is allowed


@pytest.mark.parametrize("n", [1, 3])
def test_completions_plain_and_streamed_conform(openai, http, n):
    ref = openai.schema_ref("/completions", "post")
    body = {"model": "pydoc", "prompt": ["The with statement", "A list is"], "max_tokens": 8, "seed": 5, "n": n}
    plain = http.post("/v1/completions", json=body).json()
    openai.check(plain, ref, f"a completion with n={n}")
    assert len(plain["choices"]) == 2 * n and all("seed" in c for c in plain["choices"])

    chunks = list(events(http, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}))
    for k, chunk in enumerate(chunks):
        openai.check(chunk, ref, f"streamed completion chunk {k} (n={n})", resource=STREAMED)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    ended = [c for chunk in chunks for c in chunk["choices"] if c["finish_reason"] is not None]
    assert sorted(c["index"] for c in ended) == list(range(2 * n))  # every choice ends, once


@pytest.mark.parametrize("n", [1, 2])
def test_chat_completions_plain_and_streamed_conform(openai, http, n):
    body = {"model": "pydoc", "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "What is a list?"}],
            "max_tokens": 8, "seed": 3, "n": n}
    plain = http.post("/v1/chat/completions", json=body).json()
    openai.check(plain, openai.schema_ref("/chat/completions", "post"), f"a chat completion with n={n}")
    assert [c["message"]["refusal"] for c in plain["choices"]] == [None] * n

    ref = openai.schema_ref("/chat/completions", "post", content="text/event-stream")
    chunks = list(events(http, "/v1/chat/completions", {**body, "stream": True,
                                                         "stream_options": {"include_usage": True}}))
    for k, chunk in enumerate(chunks):
        openai.check(chunk, ref, f"chat completion chunk {k} (n={n})")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    streamed = ["".join(c["delta"].get("content", "") for chunk in chunks for c in chunk["choices"] if c["index"] == k)
                for k in range(n)]
    assert streamed == [c["message"]["content"] for c in plain["choices"]]


def test_image_generations_conform(openai, http):
    ref = openai.schema_ref("/images/generations", "post")
    for body in ({"model": "digits", "prompt": "", "n": 2, "seed": 1},
                 {"model": "digits", "n": 1, "seed": 2, "label": 7, "size": "48x40"}):
        answer = http.post("/v1/images/generations", json=body).json()
        openai.check(answer, ref, f"an image generation of {body}")
        assert len(answer["data"]) == body["n"] and all("revised_prompt" not in image for image in answer["data"])


def _photo() -> bytes:
    pixels = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_image_edits_conform(openai, http):
    ref = openai.schema_ref("/images/edits", "post")
    answer = http.post("/v1/images/edits", files={"image": ("photo.png", _photo(), "image/png")},
                       data={"model": "styles", "prompt": "retina", "n": "2", "size": "32x32"}).json()
    openai.check(answer, ref, "an image edit")
    assert [image["style_name"] for image in answer["data"]] == ["retina", "retina"]
    assert Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"]))).size == (32, 32)


def test_music_conforms_to_raygens_published_schema(raygen_description, http):
    ref = raygen_description.schema_ref("/v1/music/generations", "post")
    assert ref.endswith("/MusicAnswer")
    for body in ({"model": "chorales", "n": 2, "seed": 4, "max_tokens": 12},
                 {"model": "chorales", "seed": 4, "max_tokens": 12, "response_format": "wav"}):
        answer = http.post("/v1/music/generations", json=body).json()
        raygen_description.check(answer, ref, f"a music generation of {body}")
        assert answer["data"][0]["format"] == body.get("response_format", "midi")


def _chunked(data: bytes) -> Iterator[bytes]:
    yield data  # a generator body is sent chunked, without Content-Length


# (method, route, how the request is sent, expected status): at least one refusal per route and per guard.
REFUSALS = [
    ("GET", "/v1/models", {"headers": {"Authorization": "Bearer wrong"}}, 401),
    ("GET", "/v1/models/nope", {}, 404),
    ("GET", "/v1/nothing-here", {}, 404),
    ("POST", "/v1/completions", {"json": {"model": "pydoc", "prompt": "x", "n": 0}}, 400),
    ("POST", "/v1/completions", {"json": {"model": "nope", "prompt": "x"}}, 404),
    ("POST", "/v1/completions", {"json": {"model": "pydoc", "prompt": "x", "max_tokens": 10_000}}, 400),
    ("POST", "/v1/completions", {"content": b'{"model": "pydoc", "prompt": ', "headers": {"content-type": "application/json"}}, 400),
    ("POST", "/v1/completions", {"content": _chunked(b'{"model": "pydoc", "prompt": "x"}')}, 411),
    ("POST", "/v1/completions", {"json": {"model": "pydoc", "prompt": "x" * 30_000}}, 413),
    ("POST", "/v1/chat/completions", {"json": {"model": "pydoc", "messages": []}}, 400),
    ("POST", "/v1/chat/completions", {"json": {"model": "digits", "messages": [{"role": "user", "content": "hi"}]}}, 400),
    ("POST", "/v1/chat/completions", {"json": {"model": "pydoc", "messages": [{"role": "user", "content": "hi"}],
                                               "stream": True, "max_tokens": 10_000}}, 400),
    ("POST", "/v1/images/generations", {"json": {"model": "digits", "size": "9999x9999"}}, 400),
    ("POST", "/v1/images/generations", {"json": {"model": "digits", "response_format": "url"}}, 400),
    ("POST", "/v1/images/generations", {"json": {"model": "digits", "label": 10}}, 400),
    ("POST", "/v1/images/edits", {"files": {"image": ("notes.txt", b"not a picture", "text/plain")},
                                  "data": {"model": "styles", "prompt": "retina"}}, 400),
    ("POST", "/v1/images/edits", {"json": {"model": "styles"}}, 400),
    ("POST", "/v1/music/generations", {"json": {"model": "chorales", "n": 100}}, 400),
    ("POST", "/v1/music/generations", {"json": {"model": "chorales", "primer": "%%%"}}, 400),
]


@pytest.mark.parametrize("method, route, request_kwargs, status", REFUSALS,
                         ids=[f"{m} {r} {s}" for m, r, _, s in REFUSALS])
def test_every_refusal_is_openais_error_response(openai, http, method, route, request_kwargs, status):
    answer = http.request(method, route, **request_kwargs)
    assert answer.status_code == status, answer.text
    openai.check(answer.json(), "#/components/schemas/ErrorResponse", f"the {status} of {method} {route}")
    assert answer.json()["error"]["message"]


def test_the_check_fails_when_a_required_field_goes_or_a_type_changes(openai, http):
    """The validation is not vacuous: a real answer with one field dropped or retyped is refused."""
    chat = http.post("/v1/chat/completions", json={"model": "pydoc", "max_tokens": 4, "seed": 1,
                                                   "messages": [{"role": "user", "content": "hi"}]}).json()
    ref = openai.schema_ref("/chat/completions", "post")
    assert openai.errors(chat, ref) == []
    no_refusal = copy.deepcopy(chat)
    del no_refusal["choices"][0]["message"]["refusal"]
    assert any("'refusal' is a required property" in e for e in openai.errors(no_refusal, ref))
    text_created = {**chat, "created": str(chat["created"])}
    assert any(e.startswith("$.created") for e in openai.errors(text_created, ref))
    image = http.post("/v1/images/generations", json={"model": "digits", "seed": 1}).json()
    image["data"][0]["revised_prompt"] = None  # what raygen sent before: the description allows only a string
    assert openai.errors(image, openai.schema_ref("/images/generations", "post"))


def test_files_answers_conform(openai, http):
    upload = http.post("/v1/files", data={"purpose": "batch"},
                       files={"file": ("r.jsonl", b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", '
                                                  b'"body": {"model": "pydoc", "prompt": "x"}}\n')})
    openai.check(upload.json(), openai.schema_ref("/files", "post"), "POST /v1/files")
    file_id = upload.json()["id"]
    openai.check(http.get(f"/v1/files/{file_id}").json(), openai.schema_ref("/files/{file_id}", "get"),
                 "GET /v1/files/{id}")
    for params in ({}, {"purpose": "batch", "limit": 1}, {"after": "file-" + "f" * 32}):
        openai.check(http.get("/v1/files", params=params).json(), openai.schema_ref("/files", "get"),
                     f"GET /v1/files {params}")
    openai.check(http.delete(f"/v1/files/{file_id}").json(), openai.schema_ref("/files/{file_id}", "delete"),
                 "DELETE /v1/files/{id}")
    missing = http.get(f"/v1/files/{file_id}")
    assert missing.status_code == 404
    openai.check(missing.json(), "#/components/schemas/ErrorResponse", "a 404 of GET /v1/files/{id}")


def test_batches_answers_and_output_lines_conform(openai, http):
    """A batch's answers (created, listed, retrieved until done, a cancel of a finished batch is a 400), and each line
    of its output and error files: response.body as its endpoint answers, or OpenAI's ErrorResponse. Two batches
    run at once: chat completions, and image edits in OpenAI's JSON body (the photo as a data URL)."""
    import time

    chat = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "pydoc", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "seed": i}}
            for i in range(3)]
    chat.append({**chat[0], "custom_id": "bad", "body": {**chat[0]["body"], "n": 0}})
    photo = "data:image/png;base64," + base64.b64encode(_photo()).decode()
    edits = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/images/edits",
              "body": {"model": "styles", "prompt": prompt, "images": [{"image_url": photo}], "size": "32x32"}}
             for i, prompt in enumerate(("retina", "flower", "cubism"))]  # (cubism: no such style, an error line)
    batches = []
    for endpoint, lines in (("/v1/chat/completions", chat), ("/v1/images/edits", edits)):
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        file_id = http.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", data)}).json()["id"]
        created = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": endpoint,
                                                 "completion_window": "24h"}).json()
        openai.check(created, openai.schema_ref("/batches", "post"), "POST /v1/batches")
        batches.append(created)
    deadline = time.monotonic() + 240
    for created in batches:
        while (batch := http.get(f"/v1/batches/{created['id']}").json())["status"] not in ("completed", "failed"):
            openai.check(batch, openai.schema_ref("/batches/{batch_id}", "get"), f"a {batch['status']} batch")
            assert time.monotonic() < deadline, batch
            time.sleep(1)
        openai.check(batch, openai.schema_ref("/batches/{batch_id}", "get"), "a finished batch")
        assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 1, batch
        refused = http.post(f"/v1/batches/{batch['id']}/cancel")
        assert refused.status_code == 400
        openai.check(refused.json(), "#/components/schemas/ErrorResponse", "cancelling a finished batch")
        for file_id, ref in ((batch["output_file_id"], openai.schema_ref(batch["endpoint"].removeprefix("/v1"), "post")),
                             (batch["error_file_id"], "#/components/schemas/ErrorResponse")):
            for line in http.get(f"/v1/files/{file_id}/content").text.splitlines():
                openai.check(json.loads(line)["response"]["body"], ref, f"a line of {file_id} ({batch['endpoint']})")
    openai.check(http.get("/v1/batches", params={"limit": 2}).json(), openai.schema_ref("/batches", "get"),
                 "GET /v1/batches")
