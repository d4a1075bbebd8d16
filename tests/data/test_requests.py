"""`raygen generate --requests FILE.jsonl`: OpenAI batch input lines as a row source (gen_jobs/data/requests.py).

Written in this process (no Ray): the rows are what a ShardWriter writes on the cluster. That a seeded
line's answer equals the online route's is checked against the real Serve app in tests/serving/test_serve.py.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from gen_jobs.core.errors import UserError
from gen_jobs.core.row_seed import row_seeds
from gen_jobs.data.manifest import read_manifest, read_shards
from gen_jobs.data.requests import plan_requests
from gen_jobs.generate import GenerateArgs, plan
from gen_jobs.verify import problems
from test_verify import make_dataset, write_dataset, write_in_process


def request_file(path, lines: list[dict]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def line(custom_id: str, url: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def answers(out) -> list[dict]:
    rows = read_shards(str(out), read_manifest(str(out)).shards).to_pylist()
    return [{**row, "response": json.loads(row["response"])} for row in rows]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> str:
    """An untrained tiny GPT (no Ray)."""
    from pathlib import Path

    import torch

    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.gpt.data import load_documents, split_documents
    from gen_jobs.families.gpt.model import build_model, save, train_tokenizer
    from test_gpt import TINY_GPT_ONE_ROW_BATCHES

    recipe = load_recipe("gpt_pydoc", TINY_GPT_ONE_ROW_BATCHES)
    train, _ = split_documents(load_documents(recipe.data), recipe.data.held_out)
    torch.manual_seed(0)
    folder = Path(tmp_path_factory.mktemp("requests")) / "gpt"
    save(folder, recipe, build_model(recipe.model), train_tokenizer(train, 300), {"epoch": 0})
    return str(folder)


TEXT_LINES = [
    line("seeded", "/v1/completions", model="pydoc", prompt="def ", seed=5, max_tokens=8),
    line("chat", "/v1/chat/completions", model="pydoc", messages=[{"role": "user", "content": "hi"}], max_tokens=6),
    line("hot", "/v1/completions", model="pydoc", prompt="x", temperature=9),
    line("image", "/v1/images/generations", model="pydoc"),
    line("nowhere", "/v1/embeddings", model="pydoc", input="x"),
    line("unknown field", "/v1/completions", model="pydoc", prompt="x", best_of=3),
    line("streamed", "/v1/completions", model="pydoc", prompt="x", stream=True),
    line("two prompts", "/v1/completions", model="pydoc", prompt=["a", "b"], n=2, max_tokens=4),
    line("too many", "/v1/completions", model="pydoc", prompt="x", n=9),
]


def test_every_line_is_answered_or_refused_as_the_online_route_would_and_the_job_goes_on(gpt, tmp_path):
    out = tmp_path / "answers"
    planned = plan(GenerateArgs(checkpoint=gpt, out=str(out), requests=request_file(tmp_path / "in.jsonl", TEXT_LINES),
                                rows_per_shard=4))
    write_dataset(planned, str(out))
    rows = answers(out)
    assert [r["custom_id"] for r in rows] == [x["custom_id"] for x in TEXT_LINES]
    assert [r["id"] for r in rows] == list(range(len(TEXT_LINES)))
    by = {r["custom_id"]: r for r in rows}
    assert {k: by[k]["status_code"] for k in by} == {"seeded": 200, "chat": 200, "hot": 400, "image": 400,
                                                       "nowhere": 404, "unknown field": 400, "streamed": 400,
                                                       "two prompts": 200, "too many": 400}
    for custom_id, param, says in [("hot", "temperature", "less than or equal to 2"), ("image", "url", "text model"),
                                   ("nowhere", "url", "not a route"), ("unknown field", "best_of", "not a field"),
                                   ("streamed", "stream", "not offered in a batch"), ("too many", "n", "at most 8")]:
        error = by[custom_id]["response"]["error"]
        assert error["param"] == param and says in error["message"], (custom_id, error)
        assert error["type"] in ("invalid_request_error", "not_found_error")
    seeded = by["seeded"]["response"]
    assert seeded["object"] == "text_completion" and seeded["model"] == "pydoc" and seeded["created"] == 0
    assert seeded["choices"][0]["seed"] == 5  # its own seed, not the row's
    chat = by["chat"]["response"]
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    # a line without a seed is answered with its row's seed, and says so
    assert [r["seed"] for r in rows] == row_seeds(planned.identity.seed, np.arange(len(rows))).tolist()
    assert chat["choices"][0]["seed"] == by["chat"]["seed"]
    assert [c["index"] for c in by["two prompts"]["response"]["choices"]] == [0, 1, 2, 3]
    manifest = read_manifest(str(out))
    assert manifest.num_rows == len(TEXT_LINES) and manifest.source.kind == "requests"
    assert manifest.quality["status_codes"] == {"200": 3, "400": 5, "404": 1}
    assert problems(str(out))[0] == []


def test_a_line_is_answered_alike_alone_among_others_and_in_any_batch(gpt, tmp_path):
    """Row i is a function of its line: the same line alone, or after others, in one micro-batch or one row at a
    time, gets the same answer, id included."""
    alone = tmp_path / "alone"
    write_dataset(plan(GenerateArgs(checkpoint=gpt, out=str(alone), seed=3,
                                    requests=request_file(tmp_path / "one.jsonl", TEXT_LINES[:1]))), str(alone))
    mixed = [TEXT_LINES[1], TEXT_LINES[7], TEXT_LINES[2], TEXT_LINES[0]]
    path = request_file(tmp_path / "mixed.jsonl", mixed)
    together, one_by_one = tmp_path / "together", tmp_path / "one_by_one"
    for out, micro_batch in ((together, 16), (one_by_one, 1)):
        write_in_process(plan(GenerateArgs(checkpoint=gpt, out=str(out), seed=3, requests=path)), str(out), micro_batch)
    assert pq.read_table(together / "part-00000.parquet") == pq.read_table(one_by_one / "part-00000.parquet")
    first = [json.loads(r) for r in pq.read_table(together / "part-00000.parquet").column("response").to_pylist()]
    choices = lambda answer: answer["choices"]  # noqa: E731  (ids differ with the file: its digest names them)
    assert choices(first[3]) == choices(answers(alone)[0]["response"])


def test_image_lines_answer_the_bytes_of_the_dataset_rows_with_the_same_seed(random_checkpoint, tmp_path):
    reference = tmp_path / "rows"
    make_dataset(random_checkpoint, str(reference), num_samples=6, rows_per_shard=6)
    rows = read_shards(str(reference), read_manifest(str(reference)).shards).to_pylist()
    lines = [line(f"r{r['id']}", "/v1/images/generations", model="digits", seed=r["seed"]) for r in rows]
    lines.append(line("big", "/v1/images/generations", model="digits", size="4096x4096"))
    out = tmp_path / "answers"
    write_dataset(plan(GenerateArgs(checkpoint=random_checkpoint, out=str(out),
                                    requests=request_file(tmp_path / "in.jsonl", lines))), str(out))
    got = answers(out)
    for row, answer in zip(rows, got):
        image = answer["response"]["data"][0]
        assert base64.b64decode(image["b64_json"]) == row["image"]["bytes"] and image["label"] == row["label"]
        # the media column holds the same PNG, decoded, named by the line
        assert answer["images"] == [{"bytes": row["image"]["bytes"], "path": f"{answer['custom_id']}-0.png"}]
    assert got[-1]["status_code"] == 400 and got[-1]["response"]["error"]["param"] == "size"
    assert got[-1]["images"] == []  # an error has no images
    features = json.loads(pq.read_schema(next(out.glob("part-*.parquet"))).metadata[b"huggingface"])["info"]["features"]
    assert features["images"] == {"feature": {"_type": "Image"}, "_type": "List"}  # datasets decodes them


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_image_edit_lines_answer_the_bytes_of_the_stylised_rows_of_the_same_photos(style_checkpoint, tmp_path):
    from test_style import photo_folder

    photos = photo_folder(tmp_path / "photos", count=2)
    reference = tmp_path / "rows"
    write_dataset(plan(GenerateArgs(checkpoint=style_checkpoint, out=str(reference), input=str(photos),
                                    options={"styles": "1"})), str(reference))
    rows = read_shards(str(reference), read_manifest(str(reference)).shards).to_pylist()
    photo = data_url((photos / "photo-0.png").read_bytes())
    lines = [line(f"p{k}", "/v1/images/edits", model="styles", prompt="retina",
                  images=[{"image_url": data_url((photos / f"photo-{k}.png").read_bytes())}]) for k in range(2)]
    refused = {
        "fetched": ([{"image_url": "https://example.com/photo.png"}], "fetches no URLs"),
        "two": ([{"image_url": photo}, {"image_url": photo}], "stylises one a request"),
        "by id": ([{"file_id": "file-" + "0" * 32}], "no uploaded images by file id"),
        "not base64": ([{"image_url": "data:image/png;base64,#!"}], "not base64"),
        "not a picture": ([{"image_url": "data:text/plain;base64,aGVsbG8="}], "not a usable picture"),
    }
    lines += [line(name, "/v1/images/edits", model="styles", prompt="retina", images=images)
              for name, (images, _) in refused.items()]
    out = tmp_path / "answers"
    write_dataset(plan(GenerateArgs(checkpoint=style_checkpoint, out=str(out),
                                    requests=request_file(tmp_path / "in.jsonl", lines))), str(out))
    got = {answer["custom_id"]: answer for answer in answers(out)}
    for k, row in enumerate(rows):
        image = got[f"p{k}"]["response"]["data"][0]
        assert image["style_name"] == "retina" and base64.b64decode(image["b64_json"]) == row["image"]["bytes"]
        assert got[f"p{k}"]["images"] == [{"bytes": row["image"]["bytes"], "path": f"p{k}-0.png"}]
    for name, (_, says) in refused.items():
        assert got[name]["status_code"] == 400 and says in got[name]["response"]["error"]["message"], got[name]


@pytest.mark.parametrize("text, says", [
    ('{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n{not json\n', "line 2: not JSON"),
    ('{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n'
     '{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n', "line 2: custom_id 'a' is also line 1's"),
    ('{"custom_id": "a", "method": "GET", "url": "/v1/models", "body": {}}\n', "line 1: method is 'GET'"),
    ('{"custom_id": "a", "url": "/v1/completions"}\n', "line 1: no method, body"),
    ('["a"]\n', "line 1: not a JSON object"),
    ('{"custom_id": 7, "method": "POST", "url": "/v1/completions", "body": {}}\n', "custom_id must be a non-empty string"),
    ('{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": "x"}\n', "body must be a JSON object"),
    ("\n\n", "holds no requests"),
])
def test_a_file_that_is_not_a_batch_input_file_is_refused_before_any_row(tmp_path, text, says):
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    with pytest.raises(UserError, match=None) as refused:
        plan_requests(str(path))
    assert says in str(refused.value), str(refused.value)


def test_requests_flags_that_do_not_apply_are_refused(random_checkpoint, tmp_path):
    path = request_file(tmp_path / "in.jsonl", [line("a", "/v1/images/generations", model="digits")])
    for extra, says in [({"filter": "confidence>=0.5"}, "--filter does not apply"), ({"labels": "3"}, "--labels does not apply")]:
        with pytest.raises(UserError, match=says):
            plan(GenerateArgs(checkpoint=random_checkpoint, out=str(tmp_path / "o"), requests=path, **extra))
    with pytest.raises(ValueError, match="exactly one of"):
        GenerateArgs(checkpoint=random_checkpoint, out=str(tmp_path / "o"), requests=path, num_samples=3)
