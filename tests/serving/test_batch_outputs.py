"""A batch's output and error files, written a part a shard (serving.batch_job.Outputs): no Ray, shards by hand."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from gen_jobs.data.requests import Answer, answers_table
from serving.batch_job import Outputs
from serving.batches import BatchStore
from serving.files import FileStore

BATCH = "batch_" + "ab" * 16


def write_shard(data, k: int, answers: list[tuple[str, Answer]]) -> None:
    ids = np.arange(k * 10, k * 10 + len(answers))
    lines = [{"custom_id": custom_id} for custom_id, _ in answers]
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(answers_table(ids, ids, lines, [a for _, a in answers]), data / f"part-{k:05d}.parquet")


def ok(tokens: int) -> Answer:
    return Answer(200, {"object": "text_completion", "usage": {"prompt_tokens": 1, "completion_tokens": tokens}})


def refused() -> Answer:
    return Answer(400, {"error": {"message": "temperature too high", "type": "invalid_request_error"}})


def content(files: FileStore, file_id: str) -> list[dict]:
    return [json.loads(line) for line in b"".join(files.chunks(file_id)).decode().splitlines()]


def test_each_shard_becomes_a_part_once_and_the_parts_read_back_as_one_file(tmp_path):
    files, batches = FileStore(str(tmp_path)), BatchStore(str(tmp_path))
    data = tmp_path / "batches" / BATCH / "data"
    outputs = Outputs(files, batches, BATCH)
    write_shard(data, 0, [("a", ok(3)), ("b", refused())])
    outputs.write_new_shards()
    assert outputs.totals()[:2] == (1, 1)  # request_counts while the batch runs
    write_shard(data, 1, [("c", ok(4))])
    outputs.write_new_shards()
    outputs.write_new_shards()  # (a shard already written is not written again)
    output, errors, completed, failed, usage = outputs.finish()
    assert (completed, failed, output.lines, errors.lines) == (2, 1, 2, 1)
    assert [line["custom_id"] for line in content(files, output.id)] == ["a", "c"]  # in row order, across parts
    refusal = content(files, errors.id)[0]
    assert refusal["custom_id"] == "b" and refusal["response"]["status_code"] == 400
    assert refusal["response"]["body"]["error"]["message"] == "temperature too high"
    assert usage.answer()["output_tokens"] == 7 and usage.answer()["input_tokens"] == 2
    assert output.bytes == sum(len(chunk) for chunk in files.chunks(output.id))
    assert {f.id for f in files.all()} == {output.id, errors.id}
    files.delete(output.id)
    assert not (tmp_path / "files" / f"{output.id}.parts").exists()


def test_a_job_started_again_counts_the_shards_the_last_one_wrote(tmp_path):
    files, batches = FileStore(str(tmp_path)), BatchStore(str(tmp_path))
    data = tmp_path / "batches" / BATCH / "data"
    write_shard(data, 0, [("a", ok(3)), ("b", refused())])
    Outputs(files, batches, BATCH).write_new_shards()  # the job that was killed
    write_shard(data, 1, [("c", ok(4))])
    again = Outputs(files, batches, BATCH)
    assert again.totals()[:2] == (1, 1)
    output, errors, completed, failed, usage = again.finish()
    assert (completed, failed, output.lines, errors.lines) == (2, 1, 2, 1)
    assert usage.answer()["output_tokens"] == 7
    assert [line["custom_id"] for line in content(files, output.id)] == ["a", "c"]


def test_a_batch_without_refusals_has_no_error_file(tmp_path):
    files, batches = FileStore(str(tmp_path)), BatchStore(str(tmp_path))
    write_shard(tmp_path / "batches" / BATCH / "data", 0, [("a", ok(1))])
    output, errors, completed, failed, _ = Outputs(files, batches, BATCH).finish()
    assert errors is None and (completed, failed) == (1, 0)
    assert [f.id for f in files.all()] == [output.id]


def test_an_expired_batch_writes_an_error_line_for_each_request_it_did_not_reach(tmp_path):
    files, batches = FileStore(str(tmp_path)), BatchStore(str(tmp_path))
    write_shard(tmp_path / "batches" / BATCH / "data", 0, [("a", ok(1)), ("b", ok(1))])
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps({"custom_id": c, "method": "POST", "url": "/v1/completions", "body": {}}) + "\n"
                                for c in "abcd"))
    output, errors, completed, failed, _ = Outputs(files, batches, BATCH).finish(str(requests))
    assert (completed, failed) == (2, 2)
    unreached = content(files, errors.id)
    assert [e["custom_id"] for e in unreached] == ["c", "d"]
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in unreached)
