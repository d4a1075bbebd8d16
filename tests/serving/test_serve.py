"""Ray Serve end to end: real HTTP against the app running on the session's cluster.

The app (conftest's `server`) serves a trained DCGAN, a small GPT, a music
model, a style model, and the DCGAN again behind a deliberately tiny queue (for
the overload test), with an API key required.
Clients are the official `openai` package and plain httpx.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import SERVE_API_KEY
from gen_jobs.data.manifest import read_manifest, read_shards
from gen_jobs.generate import GenerateArgs, generate

API_KEY = SERVE_API_KEY


def png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_openai_client_lists_models_and_completes(client):
    assert {m.id for m in client.models.list()} == {"digits", "pydoc", "chorales", "styles", "diffusion",
                                                   "digits-small-queue"}
    plain = client.completions.create(model="pydoc", prompt="The with statement", max_tokens=12, seed=7, n=2)
    assert len(plain.choices) == 2 and plain.choices[0].text != plain.choices[1].text
    assert all(c.finish_reason in ("stop", "length") for c in plain.choices)
    assert plain.usage.completion_tokens <= 24 and plain.usage.prompt_tokens > 0

    streamed = client.completions.create(model="pydoc", prompt="The with statement", max_tokens=12, seed=7, n=2, stream=True)
    texts, reasons = ["", ""], [None, None]
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] += c.text
            reasons[c.index] = c.finish_reason or reasons[c.index]
    assert texts == [c.text for c in plain.choices]
    assert reasons == [c.finish_reason for c in plain.choices]


def test_chat_streaming_matches_the_plain_answer(client):
    messages = [{"role": "system", "content": "You explain Python."}, {"role": "user", "content": "What is a list?"}]
    plain = client.chat.completions.create(model="pydoc", messages=messages, max_tokens=16, seed=3)
    chunks = list(client.chat.completions.create(model="pydoc", messages=messages, max_tokens=16, seed=3, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_images_generate_valid_pngs_of_the_asked_label_and_size(client):
    result = client.images.generate(model="digits", prompt="a digit", n=4, response_format="b64_json",
                                    extra_body={"seed": 11, "label": 7})
    images = [png(d.b64_json) for d in result.data]
    assert len(images) == 4 and all(img.shape == (32, 32) and img.dtype == np.uint8 for img in images)
    assert [d.model_extra["label"] for d in result.data] == [7] * 4
    assert [d.model_extra["seed"] for d in result.data] == [11, 12, 13, 14]
    assert len({img.tobytes() for img in images}) == 4  # four seeds, four different digits
    bigger = client.images.generate(model="digits", prompt="", size="64x64", extra_body={"seed": 11, "label": 7})
    assert np.array_equal(png(bigger.data[0].b64_json)[::2, ::2], images[0])  # nearest-neighbour upscale
    # All 64 bits of a seed count: s and s + 2**32 are different requests, for images and text alike.
    far = client.images.generate(model="digits", prompt="", extra_body={"seed": 11 + 2**32, "label": 7})
    assert png(far.data[0].b64_json).tobytes() != images[0].tobytes()
    texts = [client.completions.create(model="pydoc", prompt="The", max_tokens=12, temperature=1.0, seed=s).choices[0].text
             for s in (5, 5 + 2**32)]
    assert texts[0] != texts[1]


def test_music_pieces_over_http_equal_the_batch_jobs_rows(http, music_checkpoint, tmp_path):
    import mido

    generate(GenerateArgs(checkpoint=music_checkpoint, out=str(tmp_path / "music"), num_samples=3, rows_per_shard=3,
                          workers=1), log=lambda *_: None)
    rows = read_shards(str(tmp_path / "music"), read_manifest(str(tmp_path / "music")).shards).to_pylist()
    for row in rows:
        answer = http.post("/v1/music/generations", json={"model": "chorales", "seed": row["seed"]})
        assert answer.status_code == 200, answer.text
        piece = answer.json()["data"][0]
        assert base64.b64decode(piece["b64_json"]) == row["midi"]
        assert (piece["seed"], piece["num_notes"], piece["key"]) == (row["seed"], row["num_notes"], row["key"])
        mido.MidiFile(file=io.BytesIO(row["midi"]))
    wav = http.post("/v1/music/generations", json={"model": "chorales", "seed": 4, "n": 2, "response_format": "wav",
                                                   "max_tokens": 16, "primer": base64.b64encode(rows[0]["midi"]).decode()})
    assert wav.status_code == 200, wav.text
    assert [base64.b64decode(d["b64_json"])[:4] for d in wav.json()["data"]] == [b"RIFF", b"RIFF"]
    assert [d["seed"] for d in wav.json()["data"]] == [4, 5]
    for body, param in (({"primer": "not base64!"}, "primer"), ({"primer": base64.b64encode(b"MThd junk").decode()}, "primer"),
                        ({"max_tokens": 96}, "max_tokens"), ({"n": 9}, "n")):
        answer = http.post("/v1/music/generations", json={"model": "chorales", **body})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    assert http.post("/v1/music/generations", json={"model": "digits"}).status_code == 400  # an image model
    listed = {m["id"]: m["raygen"] for m in http.get("/v1/models").json()["data"]}
    assert listed["chorales"]["kind"] == "music" and listed["chorales"]["context_tokens"] == 96


def test_images_edit_through_the_openai_client_stylises_as_the_batch_job_does(client, http, style_checkpoint, tmp_path):
    import openai

    from test_style import photo_folder

    photos = photo_folder(tmp_path / "photos", count=1)
    photo = (photos / "photo-0.png").read_bytes()
    answer = client.images.edit(model="styles", image=("photo.png", photo, "image/png"), prompt="retina")
    assert answer.data[0].style_name == "retina" and png(answer.data[0].b64_json).shape == (40, 43, 3)
    generate(GenerateArgs(checkpoint=style_checkpoint, out=str(tmp_path / "out"), input=str(photos), options={"styles": "1"},
                          workers=1), log=lambda _: None)
    row = read_shards(str(tmp_path / "out"), read_manifest(str(tmp_path / "out")).shards, ["image"]).column("image")[0]
    assert base64.b64decode(answer.data[0].b64_json) == row.as_py()["bytes"]  # the dataset's row, byte for byte
    as_json = http.post("/v1/images/edits", json={"model": "styles", "prompt": "retina", "images": [
        {"image_url": "data:image/png;base64," + base64.b64encode(photo).decode()}]})  # OpenAI's JSON body
    assert as_json.status_code == 200 and as_json.json()["data"][0]["b64_json"] == answer.data[0].b64_json
    fetched = http.post("/v1/images/edits", json={"model": "styles", "images": [{"image_url": "https://example.com/a.png"}]})
    assert fetched.status_code == 400 and "fetches no URLs" in fetched.json()["error"]["message"]
    by_index = client.images.edit(model="styles", image=("p.png", photo, "image/png"), prompt="", n=2, size="20x10",
                                  extra_body={"style": 0})
    assert [d.style for d in by_index.data] == [0, 0] and png(by_index.data[1].b64_json).shape == (10, 20, 3)
    listed = {m["id"]: m["raygen"] for m in http.get("/v1/models").json()["data"]}
    assert listed["styles"]["kind"] == "image_edit" and listed["styles"]["styles"] == ["flower", "retina"]

    for kwargs, param, says in [
        ({"image": ("notes.txt", b"plain words", "text/plain"), "prompt": "flower"}, "image", "not a usable picture"),
        ({"image": ("p.png", photo, "image/png"), "prompt": "cubism"}, "prompt", "use one of: flower, retina"),
        ({"image": ("p.png", photo, "image/png"), "prompt": "", "extra_body": {"style": 7}}, "style", "out of range"),
        ({"image": ("p.png", photo, "image/png"), "prompt": "flower", "n": 9}, "n", "above this server's limit"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.edit(model="styles", **kwargs)
        assert caught.value.body["param"] == param and says in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="image_edit model"):
        client.images.generate(model="styles", prompt="x")
    with pytest.raises(openai.BadRequestError, match="does not serve image_edit"):
        client.images.edit(model="digits", image=("p.png", photo, "image/png"), prompt="flower")
    missing = http.post("/v1/images/edits", data={"model": "styles", "prompt": "flower"})
    assert missing.status_code == 400 and "multipart" in missing.json()["error"]["message"]
    no_image = http.post("/v1/images/edits", data={"model": "styles"}, files={"other": ("a", b"x")})
    assert no_image.status_code == 400 and no_image.json()["error"]["param"] in ("image", "other")


def test_same_seed_same_output_and_equal_to_the_batch_jobs_row(client, http, checkpoint, diffusion_checkpoint,
                                                               gpt_checkpoint, tmp_path):
    rows = {}
    for ckpt, name in ((checkpoint, "digits"), (diffusion_checkpoint, "diffusion"), (gpt_checkpoint, "texts")):
        generate(GenerateArgs(checkpoint=ckpt, out=str(tmp_path / name), num_samples=6, rows_per_shard=6, workers=1),
                 log=lambda *_: None)
        rows[name] = read_shards(str(tmp_path / name), read_manifest(str(tmp_path / name)).shards).to_pylist()
    texts = rows["texts"]

    async def image_requests(model: str, images: list[dict]) -> list[dict]:  # concurrent: rows share batches
        async with httpx.AsyncClient(base_url=str(http.base_url), headers=http.headers, timeout=60) as c:
            answers = await asyncio.gather(*(
                c.post("/v1/images/generations", json={"model": model, "seed": row["seed"]}) for row in images * 2))
        return [a.json()["data"][0] for a in answers]

    for model in ("digits", "diffusion"):  # a GAN and a 4-step guided diffusion sampler alike
        answers = asyncio.run(image_requests(model, rows[model]))
        for row, answer in zip(rows[model] * 2, answers):
            assert base64.b64decode(answer["b64_json"]) == row["image"]["bytes"] and answer["label"] == row["label"]

    for row in texts[:3]:
        for _ in range(2):
            answer = client.completions.create(model="pydoc", prompt="", seed=row["seed"])
            assert (answer.choices[0].text, answer.choices[0].finish_reason) == (row["text"], row["finish_reason"])


def test_a_requests_dataset_answers_each_seeded_line_as_the_online_route_does(http, checkpoint, gpt_checkpoint,
                                                                            music_checkpoint, tmp_path):
    """`raygen generate --requests`: each line's answer equals what its route answers for the same body (all but
    the answer's `id` and `created`, which a dataset row makes a function of its line)."""
    bodies = [
        (gpt_checkpoint, "/v1/completions", {"model": "pydoc", "prompt": "def ", "seed": 11, "max_tokens": 6}),
        (gpt_checkpoint, "/v1/completions", {"model": "pydoc", "prompt": ["a", "b"], "n": 2, "seed": 12, "max_tokens": 4}),
        (gpt_checkpoint, "/v1/chat/completions", {"model": "pydoc", "seed": 13, "max_completion_tokens": 5,
                                                  "messages": [{"role": "system", "content": "Be brief."},
                                                               {"role": "user", "content": "What is a list?"}]}),
        (checkpoint, "/v1/images/generations", {"model": "digits", "seed": 14, "n": 2}),
        (checkpoint, "/v1/images/generations", {"model": "digits", "seed": 15, "label": 3, "size": "32x32"}),
        (music_checkpoint, "/v1/music/generations", {"model": "chorales", "seed": 16, "max_tokens": 12}),
        (music_checkpoint, "/v1/music/generations", {"model": "chorales", "seed": 17, "max_tokens": 12,
                                                     "response_format": "wav"}),
    ]
    media = {"images": "png", "midi": "midi", "audio": "wav"}  # a media column: the format of the files it holds
    for ckpt in (gpt_checkpoint, checkpoint, music_checkpoint):
        mine = [(url, body) for c, url, body in bodies if c == ckpt]
        requests = tmp_path / f"{len(mine)}-{mine[0][0].split('/')[2]}.jsonl"
        requests.write_text("".join(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": url, "body": body}) + "\n"
                                    for i, (url, body) in enumerate(mine)))
        out = tmp_path / requests.stem
        generate(GenerateArgs(checkpoint=ckpt, requests=str(requests), out=str(out), workers=1), log=lambda *_: None)
        rows = read_shards(str(out), read_manifest(str(out)).shards).to_pylist()
        assert [row["custom_id"] for row in rows] == [f"line-{i}" for i in range(len(mine))]
        for row, (url, body) in zip(rows, mine):
            online = http.post(url, json=body)
            assert row["status_code"] == online.status_code == 200, online.text
            answered, expected = json.loads(row["response"]), online.json()
            for key in ("id", "created"):
                answered.pop(key, None), expected.pop(key, None)
            assert answered == expected, url
            files = [base64.b64decode(piece["b64_json"]) for piece in expected.get("data", [])]
            for column in set(media) & set(row):  # the media columns hold each answer's files, decoded
                wanted = [f for f, piece in zip(files, expected["data"]) if piece.get("format", "png") == media[column]]
                assert [f["bytes"] if isinstance(f, dict) else f for f in row[column]] == wanted, column
        assert set(media) & set(rows[0]) == {checkpoint: {"images"}, music_checkpoint: {"midi", "audio"}}.get(ckpt, set())


@pytest.mark.parametrize("path, body, status, says", [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", {"model": "pydoc", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"model": "pydoc", "prompt": 3}, 400, "prompt"),
    ("/v1/completions", {"model": "pydoc", "prompt": "x", "n": 0}, 400, "n"),
    ("/v1/completions", {"model": "pydoc", "prompt": "x", "n": 9}, 400, "at most 8"),
    ("/v1/completions", {"model": "pydoc", "prompt": ["a", "b", "c"], "n": 3}, 400, "at most 8"),
    ("/v1/completions", {"model": "pydoc", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"model": "pydoc", "prompt": "x", "max_tokens": 10_000}, 400, "limit of 32"),
    ("/v1/completions", {"model": "pydoc", "prompt": "word " * 100}, 400, "context"),
    ("/v1/completions", {"model": "pydoc", "prompt": "x", "temperature": 5}, 400, "temperature"),
    ("/v1/completions", {"model": "pydoc", "prompt": "x", "best_of": 2}, 400, "best_of"),
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "does not exist"),
    ("/v1/completions", {"model": "digits", "prompt": "x"}, 400, "image model"),
    ("/v1/chat/completions", {"model": "pydoc", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "pydoc", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ("/v1/images/generations", {"model": "digits", "response_format": "url"}, 400, "b64_json"),
    ("/v1/images/generations", {"model": "digits", "size": "4096x4096"}, 400, "pixels"),
    ("/v1/images/generations", {"model": "digits", "label": 10}, 400, "label"),
    ("/v1/images/generations", {"model": "digits", "seed": -1}, 400, "seed"),
    ("/v1/images/generations", {"model": "digits", "prompt": "x" * 30_000}, 413, "at most 20,000"),
    ("/v1/completions", b'{"model": "pydoc", "prompt": "\\ud800"}', 400, "lone surrogate"),
    ("/v1/chat/completions", b'{"model": "pydoc", "messages": [{"role": "user", "content": "a\\udfff"}]}', 400,
     "lone surrogate"),
    ("/v1/completions", {"model": "pydoc", "prompt": "x", "top_k": 2**63}, 400, "top_k"),
    ("/v1/images/generations", {"model": "digits", "label": 2**64}, 400, "label"),
    ("/v1/completions", b"[" * 5000 + b"]" * 5000, 400, "nested too deeply"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_stays_up(http, path, body, status, says):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    answer = http.post(path, **kw)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert says in error["message"] or says == error["param"], error
    assert http.get("/healthz").json()["status"] == "ok"


def test_hostile_bodies_get_a_4xx_or_an_answer_never_a_500(http):
    from hypothesis import HealthCheck, given, settings, strategies as st

    from test_hostile_input import nasty_values

    fields = st.sampled_from(["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "n", "stop",
                              "seed", "stream", "stream_options", "size", "label", "response_format", "user"])
    models = st.sampled_from(["digits", "pydoc", "nope", ""])

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/images/generations"]),
           body=st.dictionaries(fields | st.text(max_size=6), nasty_values, max_size=6), model=models)
    def check(path, body, model):
        body = {"model": model, **body} if "model" not in body else body
        answer = http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert answer.status_code < 500, (body, answer.text)
        if answer.status_code >= 400:
            assert answer.json()["error"]["message"]

    check()
    assert http.get("/healthz").json()["status"] == "ok"


def test_api_key_is_required(server, http):
    assert httpx.get(f"{server}/v1/models").status_code == 401
    wrong = httpx.post(f"{server}/v1/images/generations", json={"model": "digits"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
    assert "nope" not in wrong.text and API_KEY not in wrong.text  # keys are never echoed
    open_probe = httpx.get(f"{server}/healthz")  # liveness probes need no key, so it names no model
    assert open_probe.status_code == 200 and open_probe.json() == {"status": "ok"}
    huge = http.post("/v1/images/generations", json={"model": "digits", "n": "A" * 15_000})  # (under the body limit)
    assert huge.status_code == 400 and len(huge.content) < 1_000  # the bad value is quoted, not echoed whole
    assert "(15,002 characters)" in huge.json()["error"]["message"]
    assert httpx.get(f"{server}/docs").status_code == 401  # the API's own docs follow the key too
    assert httpx.get(f"{server}/openapi.json").status_code == 401
    models = http.get("/v1/models")
    assert models.status_code == 200
    assert "checkpoint" not in models.json()["data"][0]["raygen"]  # no paths or bucket names to the world


def test_overload_gets_quick_503s_then_recovers(http):
    body = {"model": "digits-small-queue", "n": 8, "size": "512x512"}  # slow enough to pile up: 8 big PNGs each

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=str(http.base_url), headers=http.headers, timeout=120) as c:
            answers = await asyncio.gather(*(c.post("/v1/images/generations", json=body) for _ in range(24)))
        for a in answers:
            if a.status_code == 503:
                assert "overloaded" in a.json()["error"]["message"]
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert set(statuses) == {200, 503}, statuses
    assert http.post("/v1/images/generations", json={"model": "digits-small-queue"}).status_code == 200


def rows_stopped_after_clients_give_up(server: str, replica, path: str, body: dict) -> int:
    """Rows `replica` stopped after 20 clients posted `body` (seeds 0, 1000, ...) to `path` and gave up.

    A client that gives up before its request reached a batch stops no row (there is none yet): on a loaded
    machine a whole round can be such, so the clients wait a little longer each round (0.1, 0.5, 2 s) until
    rows are stopped.
    """
    before = replica.stats.remote().result()["rows_cancelled"]

    async def give_up(seed: int, patience: float) -> None:
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"},
                                     timeout=patience) as c:
            try:
                await c.post(path, json={**body, "seed": seed})
            except httpx.TimeoutException:
                pass

    async def all_give_up(patience: float) -> None:
        await asyncio.gather(*(give_up(1000 * k, patience) for k in range(20)))

    for patience in (0.1, 0.5, 2.0):
        asyncio.run(all_give_up(patience))
        deadline = time.monotonic() + 20
        while replica.stats.remote().result()["rows_cancelled"] == before and time.monotonic() < deadline:
            time.sleep(0.2)
        if replica.stats.remote().result()["rows_cancelled"] > before:
            break
    return replica.stats.remote().result()["rows_cancelled"] - before


@pytest.mark.slow
def test_clients_that_disconnect_mid_stream_free_their_rows(server, http):
    """20 clients hang up after their first chunk: their rows stop decoding, and a new request is served."""
    import time

    from ray import serve

    replica = serve.get_deployment_handle("model-pydoc", "raygen")
    before = replica.stats.remote().result()["rows_cancelled"]
    body = {"model": "pydoc", "prompt": "", "max_tokens": 32, "n": 8, "temperature": 1.0, "stream": True}

    async def hang_up(seed: int) -> None:
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
            async with c.stream("POST", "/v1/completions", json={**body, "seed": seed}) as answer:
                async for line in answer.aiter_lines():
                    if line.startswith("data: {"):
                        return  # the first chunk: hang up

    async def all_hang_up() -> None:
        await asyncio.gather(*(hang_up(seed) for seed in range(20)))

    asyncio.run(all_hang_up())
    started = time.monotonic()
    answer = http.post("/v1/completions", json={"model": "pydoc", "prompt": "The", "max_tokens": 8, "seed": 1})
    assert answer.status_code == 200
    print(f"outcome: a new request after 20 hang-ups took {time.monotonic() - started:.2f} s")
    deadline = time.monotonic() + 30
    while replica.stats.remote().result()["rows_cancelled"] == before:
        assert time.monotonic() < deadline, "no row was stopped after its client left"
        time.sleep(0.2)

    # Plain (non-streamed) requests whose clients give up are stopped too.
    stopped = rows_stopped_after_clients_give_up(server, replica, "/v1/completions", {**body, "stream": False})
    assert stopped > 0, "no row was stopped after its (non-streaming) client left"
    assert http.post("/v1/completions", json={"model": "pydoc", "prompt": "The", "max_tokens": 8}).status_code == 200


@pytest.mark.slow
def test_diffusion_clients_that_give_up_stop_their_rows_between_denoising_steps(server, http):
    """Image requests to the diffusion model whose clients give up: their rows get no more U-Net calls (the
    replica counts them), and the model still answers."""
    from ray import serve

    replica = serve.get_deployment_handle("model-diffusion", "raygen")
    body = {"model": "diffusion", "n": 8}
    assert rows_stopped_after_clients_give_up(server, replica, "/v1/images/generations", body) > 0, \
        "no row was stopped after its client left"
    assert http.post("/v1/images/generations", json={"model": "diffusion", "seed": 1}).status_code == 200


@pytest.mark.slow
def test_a_killed_replica_fails_requests_fast_and_service_returns(http):
    """SIGKILL the image model's replica under load: no request hangs, and Serve brings the model back.

    Last in this module: it disturbs the shared app.
    """
    import signal
    import subprocess
    import time
    from concurrent.futures import ThreadPoolExecutor

    def replicas() -> list[int]:
        found = subprocess.run(["pgrep", "-f", r"ServeReplica:raygen:model-digits$"], capture_output=True, text=True)
        return [int(p) for p in found.stdout.split()]

    def one(seed: int) -> tuple[int, float]:
        started = time.monotonic()
        try:
            status = http.post("/v1/images/generations", json={"model": "digits", "seed": seed}, timeout=30).status_code
        except httpx.TimeoutException:
            status = -1
        return status, time.monotonic() - started

    assert replicas(), "no replica process of the digits model found"
    with ThreadPoolExecutor(8) as pool:
        before = list(pool.map(one, range(16)))
        for pid in replicas():
            os.kill(pid, signal.SIGKILL)
        during = list(pool.map(one, range(64)))
    assert all(status == 200 for status, _ in before)
    print("outcome:", {code: sum(1 for s, _ in during if s == code) for code in {s for s, _ in during}},
          f"slowest {max(t for _, t in during):.1f} s")
    assert all(status != -1 and seconds < 30 for status, seconds in during), during  # failed fast, none hung
    deadline = time.monotonic() + 120
    while one(1)[0] != 200:  # Serve's controller starts a new replica
        assert time.monotonic() < deadline, "the model did not come back"
        time.sleep(1)
    assert http.get("/healthz").json()["status"] == "ok"


def test_the_cancelled_ids_a_replica_keeps_are_bounded():
    from serving.model_server import RecentIds

    kept = RecentIds(3)
    for n in range(10):
        kept.add(f"r{n}")
    assert len(kept) == 3 and "r9" in kept and "r6" not in kept
    kept.discard("r9")
    assert "r9" not in kept and len(kept) == 2


def test_a_prompt_over_the_character_limit_is_refused_before_it_is_tokenised(http):
    limits = http.get("/v1/models").json()["data"][0]["raygen"]["limits"]
    assert limits["max_prompt_chars"] == 5_000 and limits["max_body_bytes"] == 20_000  # every limit, shown
    for path, body in [("/v1/completions", {"model": "pydoc", "prompt": "word " * 1_500}),
                       ("/v1/chat/completions", {"model": "pydoc", "messages": [{"role": "user", "content": "x" * 3_000},
                                                                               {"role": "user", "content": "y" * 3_000}]})]:
        refused = http.post(path, json=body)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "context_length_exceeded" and "at most 5,000 a request" in error["message"]
    fits = http.post("/v1/completions", json={"model": "pydoc", "prompt": "word " * 600, "max_tokens": 4})
    assert fits.status_code == 400 and "tokens) plus max_tokens" in fits.json()["error"]["message"]  # the model's own limit


def test_costly_inputs_are_refused_from_what_they_declare_while_ordinary_requests_go_on(http):
    """The review's probes, scaled under the test server's 20 KB body limit: each is a 400 naming its limit, fast."""
    from test_serve_inputs import HEAD, NOTE, TAIL, mxl

    def png(image: Image.Image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    primers = [mxl(HEAD + NOTE + b"<print/>" * 16_000 + TAIL), mxl(HEAD + b" " * 3_000_000 + TAIL)]
    images = [png(Image.new("I;16", (1500, 1500))), png(Image.new("RGBA", (900, 900)))]  # 2.25 M pixels; 3.24 MB decoded
    assert all(len(body) < 20_000 for body in primers + images)

    async def mix() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=str(http.base_url), headers=http.headers, timeout=60) as c:
            hostile = [c.post("/v1/music/generations", json={"model": "chorales", "primer": base64.b64encode(p).decode()})
                       for p in primers]
            hostile += [c.post("/v1/images/edits", files={"image": ("x.png", i, "image/png")},
                               data={"model": "styles", "prompt": "retina", "n": "8"}) for i in images]
            ordinary = [c.post("/v1/music/generations", json={"model": "chorales", "max_tokens": 8, "seed": s})
                        for s in range(3)]
            answers = await asyncio.gather(*hostile, *ordinary)
        return answers[:len(hostile)], answers[len(hostile):]

    hostile, ordinary = asyncio.run(mix())
    says = ["limits.max_primer_elements", "limits.max_primer_bytes", "limits.max_input_pixels", "limits.max_input_bytes"]
    for answer, limit in zip(hostile, says):
        assert answer.status_code == 400 and limit in answer.json()["error"]["message"], answer.text
        assert answer.elapsed.total_seconds() < 5
    assert [a.status_code for a in ordinary] == [200] * 3
    limits = http.get("/v1/models").json()["data"][0]["raygen"]["limits"]
    assert limits["max_primer_elements"] == 10_000 and limits["request_timeout_s"] == 60  # the defaults, shown


def test_a_request_past_its_deadline_is_a_504_and_its_work_stops(server, music_checkpoint):
    """A MusicXML primer (parsed in a child process for over a second) against an app with a 0.5 s deadline."""
    from ray import serve

    from serving.app import build_app
    from serving.config import AppConfig
    from serving.primer import running_parsers
    from test_serve_inputs import chorale_mxl

    config = AppConfig(models=[{"name": "chorales", "checkpoint": music_checkpoint, "num_cpus": 0.1}],
                       limits={"request_timeout_s": 0.5})
    serve.run(build_app(config), name="raygen-deadline", route_prefix="/deadline", blocking=False)
    try:
        base = server.rsplit("/raygen", 1)[0] + "/deadline"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
            late = c.post("/v1/music/generations", json={"model": "chorales", "max_tokens": 8,
                                                         "primer": base64.b64encode(chorale_mxl()).decode()})
            assert late.status_code == 504, late.text
            assert late.json()["error"]["type"] == "timeout_error" and late.json()["error"]["code"] == "timeout"
            assert "limits.request_timeout_s" in late.json()["error"]["message"]
            for _ in range(50):  # the child parsing the primer is killed with its request
                if running_parsers() == 0:
                    break
                time.sleep(0.1)
            assert running_parsers() == 0
            answers = (c.post("/v1/music/generations", json={"model": "chorales", "max_tokens": 4}) for _ in range(5))
            assert any(a.status_code == 200 for a in answers)  # (a cold replica may miss 0.5 s once)
    finally:
        serve.delete("raygen-deadline")
