"""OpenAI's Batches API on the Serve app (serving/batches.py, serving/batch_job.py), end to end with the official
client: files.create -> batches.create -> poll batches.retrieve -> files.content, each batch a real Ray job on the
session's cluster (conftest.server: batches of 10 requests a shard, one ShardWriter).
"""

from __future__ import annotations

import io
import json
import time

import pytest

pytestmark = pytest.mark.slow

POLL_S = 240  # a batch job starts a Ray driver and a ShardWriter: tens of seconds here


def upload(client, lines: list[dict]) -> str:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch").id


def completion(custom_id: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
            "body": {"model": "pydoc", "prompt": "def ", "max_tokens": 6, **body}}


def wait(client, batch_id: str, until: tuple[str, ...] = ("completed", "failed", "cancelled", "expired")):
    deadline = time.monotonic() + POLL_S
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status} after {POLL_S} s"
        time.sleep(1)


def start_long_batch(client):
    """A batch of 100 costly requests (8 answers of 32 tokens each), once its job runs: many shards of 10
    rows, long enough to be cancelled or killed in the middle."""
    lines = [completion(f"q{i}", seed=i, max_tokens=32, n=8) for i in range(100)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/completions",
                                  completion_window="24h")
    started = wait(client, batch.id, until=("in_progress", "completed", "failed"))
    assert started.status == "in_progress", started
    return started


def wait_for_rows(client, batch_id: str, rows: int) -> None:
    """Until `rows` requests are answered (a shard holds 10)."""
    deadline = time.monotonic() + POLL_S
    while client.batches.retrieve(batch_id).request_counts.completed < rows:
        assert time.monotonic() < deadline, f"batch {batch_id} answered fewer than {rows} requests in {POLL_S} s"
        time.sleep(0.5)


def lines_of(client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).read().decode().splitlines()]


def test_a_batch_answers_every_line_once_as_the_online_route_does(client, http):
    lines = [completion(f"q{i}", seed=100 + i, prompt=["def ", "A list"][i % 2]) for i in range(12)]
    lines.append(completion("too-hot", temperature=5))
    lines.append(completion("unseeded"))
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/completions",
                                  completion_window="24h", metadata={"run": "test"})
    assert batch.status == "validating" and batch.metadata == {"run": "test"}
    done = wait(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 14 and done.request_counts.completed == 13 and done.request_counts.failed == 1
    assert done.model == "pydoc" and done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.usage.output_tokens > 0
    output, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    assert sorted(o["custom_id"] for o in output + errors) == sorted(line["custom_id"] for line in lines)
    assert [e["custom_id"] for e in errors] == ["too-hot"] and errors[0]["response"]["status_code"] == 400
    assert "temperature" in errors[0]["response"]["body"]["error"]["message"]
    by_id = {o["custom_id"]: o for o in output}
    for line in lines[:12]:
        online = http.post("/v1/completions", json=line["body"]).json()
        answered = by_id[line["custom_id"]]["response"]["body"]
        assert answered["choices"] == online["choices"] and answered["usage"] == online["usage"]
    assert by_id["unseeded"]["response"]["body"]["choices"][0]["seed"] >= 0  # the row's seed, recorded
    assert done.id in [b.id for b in client.batches.list()]


def test_images_music_and_image_edits_batches_answer_as_their_online_routes(client, http):
    """One batch for each other endpoint, run at once: every answer equals the online route's for the same body."""
    import base64

    from test_openai_conformance import _photo

    photo = "data:image/png;base64," + base64.b64encode(_photo()).decode()
    bodies = {
        "/v1/images/generations": [{"model": "digits", "seed": i, "n": 2, **({"label": 3} if i else {})} for i in range(3)],
        "/v1/music/generations": [{"model": "chorales", "seed": i, "max_tokens": 12} for i in range(3)],
        "/v1/images/edits": [{"model": "styles", "prompt": prompt, "images": [{"image_url": photo}], "size": "24x20"}
                             for prompt in ("retina", "flower")],
    }
    batches = {}
    for endpoint, endpoint_bodies in bodies.items():
        lines = [{"custom_id": f"r{i}", "method": "POST", "url": endpoint, "body": body}
                 for i, body in enumerate(endpoint_bodies)]
        batches[endpoint] = client.batches.create(input_file_id=upload(client, lines), endpoint=endpoint,
                                                  completion_window="24h").id
    for endpoint, batch_id in batches.items():
        done = wait(client, batch_id)
        assert done.status == "completed" and done.error_file_id is None, done
        assert done.request_counts.completed == len(bodies[endpoint]) and done.usage is None  # (no tokens: no usage)
        by_id = {o["custom_id"]: o["response"]["body"] for o in lines_of(client, done.output_file_id)}
        for i, body in enumerate(bodies[endpoint]):
            online = http.post(endpoint, json=body).json()
            assert by_id[f"r{i}"]["data"] == online["data"], (endpoint, body)


def test_a_file_that_fails_validation_fails_the_batch_naming_its_lines(client):
    lines = [completion("a"), completion("a"), {**completion("b"), "url": "/v1/chat/completions"},
             completion("c", model="nope"), completion("d", model="digits")]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/completions",
                                  completion_window="24h")
    done = wait(client, batch.id)
    assert done.status == "failed" and done.failed_at
    found = {(e.line, e.code) for e in done.errors.data}
    assert found == {(2, "duplicate_custom_id"), (3, "mismatched_endpoint"), (4, "model_not_found"),
                     (5, "invalid_model")}, done.errors


def test_a_cancelled_batch_keeps_the_rows_it_finished_and_no_more(client):
    batch = start_long_batch(client)
    wait_for_rows(client, batch.id, 10)  # the first shard landed
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "completed"), cancelling
    done = wait(client, batch.id)
    if done.status == "completed":
        pytest.skip("the batch finished before the cancel reached it")
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    output = lines_of(client, done.output_file_id)
    ids = [o["custom_id"] for o in output]
    assert 10 <= len(ids) < 100 and len(set(ids)) == len(ids) and len(ids) % 10 == 0  # whole shards, each once
    assert ids == [f"q{i}" for i in range(len(ids))]


def test_a_batch_past_its_completion_window_expires_keeping_what_it_finished(client):
    from conftest import SERVE_APP
    from serving.batches import BatchStore

    batch = start_long_batch(client)
    wait_for_rows(client, batch.id, 10)
    store = BatchStore(SERVE_APP["batch_storage"])
    deadline = time.monotonic() + POLL_S
    while store.get(batch.id).status == "in_progress":  # the 24 hours pass: expires_at is now behind us
        assert time.monotonic() < deadline, "the batch did not see its completion window end"
        if store.get(batch.id).expires_at > time.time():  # (written again if the job's own update raced this one)
            store.update(batch.id, expires_at=int(time.time()) - 1)
        time.sleep(0.5)
    done = wait(client, batch.id)
    if done.status == "completed":
        pytest.skip("the batch finished before its window ended")
    assert done.status == "expired" and done.expired_at, done
    output, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    finished = [o["custom_id"] for o in output]
    assert 10 <= len(finished) < 100 and len(finished) % 10 == 0 and finished == [f"q{i}" for i in range(len(finished))]
    assert [e["custom_id"] for e in errors] == [f"q{i}" for i in range(len(finished), 100)]  # the rest, each once
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)
    assert (done.request_counts.completed, done.request_counts.failed) == (len(finished), 100 - len(finished))


def test_two_batches_at_once_each_answer_their_own_lines(client):
    ids = {}
    for name in ("a", "b"):
        lines = [completion(f"{name}{i}", seed=i) for i in range(15)]
        batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/completions",
                                      completion_window="24h")
        ids[batch.id] = {line["custom_id"] for line in lines}
    for batch_id, custom_ids in ids.items():
        done = wait(client, batch_id)
        assert done.status == "completed" and done.request_counts.completed == 15, done
        assert {o["custom_id"] for o in lines_of(client, done.output_file_id)} == custom_ids


def test_a_killed_batch_job_fails_its_batch_saying_why(client):
    import os
    import signal
    import subprocess

    batch = start_long_batch(client)
    # (the job's driver runs in a process session of its own: found by its command line, which names the batch)
    found = subprocess.run(["pgrep", "-f", f"serving.batch_job .*{batch.id}"], capture_output=True, text=True)
    drivers = [int(pid) for pid in found.stdout.split()]
    assert drivers, "the batch's job driver was not found"
    for pid in drivers:
        os.kill(pid, signal.SIGKILL)
    done = wait(client, batch.id)
    assert done.status == "failed" and done.failed_at, done
    assert done.errors.data[0].code == "job_failed" and f"ray job logs {batch.id}" in done.errors.data[0].message


def test_unknown_batches_files_and_endpoints_are_4xx(http):
    assert http.get("/v1/batches/batch_" + "0" * 32).status_code == 404
    assert http.post("/v1/batches/nope/cancel").status_code == 404
    missing = http.post("/v1/batches", json={"input_file_id": "file-" + "0" * 32, "endpoint": "/v1/completions",
                                             "completion_window": "24h"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "file_id"
    for body, param in [({"input_file_id": "x", "endpoint": "/v1/embeddings", "completion_window": "24h"}, "endpoint"),
                        ({"input_file_id": "x", "endpoint": "/v1/completions", "completion_window": "1h"},
                         "completion_window")]:
        answer = http.post("/v1/batches", json=body)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text


def test_the_docs_batch_example_runs_against_the_server(server, tmp_path):
    """examples/batch.py on examples/batch.jsonl, as the docs show it, from another working directory."""
    import os
    import subprocess
    import sys

    from conftest import REPO, SERVE_API_KEY

    env = {**os.environ, "OPENAI_BASE_URL": f"{server}/v1", "OPENAI_API_KEY": SERVE_API_KEY}
    done = subprocess.run([sys.executable, str(REPO / "examples" / "batch.py"), str(REPO / "examples" / "batch.jsonl"),
                           "--model", "pydoc", "--timeout", str(POLL_S)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=POLL_S + 60)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout.splitlines()
    assert any(line.endswith(": completed: 3 answered, 1 errors of 4") for line in printed), done.stdout
    assert sorted(line.split(":")[0] for line in printed if not line.startswith("batch ")) == \
        ["imports", "lists", "too-hot", "with-statement"]
    assert any(line.startswith("too-hot: 400: ") and "temperature" in line for line in printed)


def test_a_batch_goes_on_while_serve_restarts_and_is_still_listed(client):
    """Serve stopped and started mid-batch (conftest.SERVE_APP["restart"]): the batch's Ray job does not
    depend on it, and its record lives in storage, so the new app lists it and sees it complete."""
    from conftest import SERVE_APP

    lines = [completion(f"q{i}", seed=i, max_tokens=32, n=8) for i in range(40)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/completions",
                                  completion_window="24h")
    running = wait(client, batch.id, until=("in_progress", "completed", "failed"))
    assert running.status == "in_progress", running
    SERVE_APP["restart"]()
    assert batch.id in [b.id for b in client.batches.list(limit=100)]
    done = wait(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 40, done
    assert sorted(o["custom_id"] for o in lines_of(client, done.output_file_id)) == sorted(f"q{i}" for i in range(40))
