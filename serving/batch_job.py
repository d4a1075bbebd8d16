"""One batch of the Batches API, run as a Ray job: validate its file, answer it, write its output files.

    python -m serving.batch_job STORAGE BATCH_ID      (submitted by serving.batches; submission id = BATCH_ID)

Steps, each written to the batch's record (serving.batches.BatchStore) as OpenAI's life cycle names it:
- validating: every line of the input file is checked (JSON, the four fields, a unique custom_id,
  `url` equal to the batch's endpoint, one model the server serves and that serves the endpoint);
  a file that fails is `failed`, with `errors` naming up to 100 lines as OpenAI's BatchError;
- in_progress: `raygen generate --requests` into `<storage>/batches/<id>/data` (a dataset like any:
  manifest, verify, resume), `request_counts.completed` following the shards as they land;
- finalizing: the output file (answers with status 200) and the error file (the others), one line
  per request, `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`,
  streamed from the shards into the Files API's storage (purpose batch_output);
- completed, with output_file_id, error_file_id, request_counts and usage (tokens, for text).
A cancel (the record says `cancelling`) stops the generation between shards; the rows of the shards
already written go to the output files, and the batch is `cancelled`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator

from gen_jobs.core import storage
from gen_jobs.data.requests import checked_lines
from serving.batch_lines import line_digest
from serving.batches import BatchErrorItem, BatchErrors, BatchStore, RequestCounts, now
from serving.files import FileRecord, FileStore

MAX_ERRORS = 100
WATCH_S = 2.0


def validate(input_uri: str, endpoint: str, kinds: dict[str, str]) -> tuple[list[BatchErrorItem], str | None, int]:
    """(problems, the batch's model, lines) of an input file."""
    from serving.apis import endpoints

    wanted_kind = endpoints()[endpoint][0].kind
    problems: list[BatchErrorItem] = []
    model, lines = None, 0

    def problem(code: str, message: str, line: int, param: str | None = None) -> None:
        if len(problems) < MAX_ERRORS:
            problems.append(BatchErrorItem(code=code, message=message, line=line, param=param))

    for line in checked_lines(input_uri):  # streamed: JSON, the four fields, unique custom_ids
        lines += 1
        if line.code is not None:
            problem(line.code, line.problem, line.number, "custom_id" if line.code == "duplicate_custom_id" else None)
        if line.request is None:
            continue
        request, n = line.request, line.number
        if request["url"] != endpoint:
            problem("mismatched_endpoint", f"url {request['url']!r} is not the batch's endpoint {endpoint!r}", n, "url")
        name = request["body"].get("model")
        if name not in kinds:
            problem("model_not_found", f"model {name!r} is not served here; served: {', '.join(kinds)}", n, "body.model")
        elif kinds[name] != wanted_kind:
            problem("invalid_model", f"model {name!r} is a {kinds[name]} model; it does not serve {endpoint}", n,
                    "body.model")
        elif model is None:
            model = name
        elif name != model:
            problem("mismatched_model", f"model {name!r}: every line of a batch must name the same model ({model!r})",
                    n, "body.model")
    if lines == 0:
        problem("empty_file", "the input file holds no requests", 1)
    return problems, model, lines


def answered_rows(data_uri: str) -> Iterator[dict]:
    """The rows ({custom_id, status_code, response}) of the shards written under `data_uri`, in row order."""
    import pyarrow.parquet as pq

    names = sorted(n for n in storage.list_names(data_uri) if n.startswith("part-") and n.endswith(".parquet")) \
        if storage.exists(data_uri) else []
    for name in names:
        fs, path = storage.resolve(storage.join(data_uri, name))
        shard = pq.ParquetFile(path, filesystem=fs)
        for group in range(shard.num_row_groups):
            yield from shard.read_row_group(group, columns=["custom_id", "status_code", "response"]).to_pylist()


class Usage:
    """Tokens of a text batch's answers, added up as they pass (`answer`: None when no answer counts any)."""

    def __init__(self):
        self.prompt = self.completion = 0
        self.counted = False

    def add(self, body: dict) -> None:
        if usage := body.get("usage"):
            self.counted = True
            self.prompt += usage.get("prompt_tokens", 0)
            self.completion += usage.get("completion_tokens", 0)

    def answer(self) -> dict | None:
        if not self.counted:
            return None
        return {"input_tokens": self.prompt, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.completion, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt + self.completion}


def write_outputs(files: FileStore, batch_id: str, data_uri: str) -> tuple[FileRecord, FileRecord, dict | None]:
    """(output file, error file, usage): one pass over the shards writes each answer as a batch output line,
    `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`, to the output file
    (status 200) or the error file (the others), adding up the tokens of the answers."""
    usage = Usage()
    with files.writing(f"{batch_id}_output.jsonl", "batch_output") as output, \
            files.writing(f"{batch_id}_error.jsonl", "batch_output") as errors:
        for row in answered_rows(data_uri):
            body = json.loads(row["response"])
            request_id = line_digest(batch_id, row["custom_id"])
            line = {"id": f"batch_req_{request_id}", "custom_id": row["custom_id"],
                    "response": {"status_code": row["status_code"], "request_id": request_id, "body": body},
                    "error": None}
            (output if row["status_code"] == 200 else errors).write((json.dumps(line, ensure_ascii=False) + "\n").encode())
            if row["status_code"] == 200:
                usage.add(body)
    return output.record, errors.record, usage.answer()


def finished_rows(data_uri: str, rows_per_shard: int) -> int:
    """Rows in the shards written so far (each shard appears whole)."""
    if not storage.exists(data_uri):
        return 0
    return sum(1 for n in storage.list_names(data_uri) if n.startswith("part-") and n.endswith(".parquet")) \
        * rows_per_shard


class Watcher(threading.Thread):
    """Every WATCH_S: request_counts from the shards written; on a cancel, SIGINT to this job (the generation
    stops between shards: the Ray Data pipeline shuts down and the lease is released)."""

    def __init__(self, batches: BatchStore, batch_id: str, total: int, rows_per_shard: int):
        super().__init__(name="raygen-batch-watcher", daemon=True)
        self.batches, self.batch_id, self.total, self.rows_per_shard = batches, batch_id, total, rows_per_shard
        self.stop = threading.Event()
        self.cancelled = False

    def run(self) -> None:
        while not self.stop.wait(WATCH_S):
            record = self.batches.get(self.batch_id)
            if record.status == "cancelling":
                self.cancelled = True
                os.kill(os.getpid(), signal.SIGINT)
                return
            done = min(finished_rows(self.batches.data_uri(self.batch_id), self.rows_per_shard), self.total)
            if done != record.request_counts.completed and record.status == "in_progress":
                self.batches.update(self.batch_id, request_counts=RequestCounts(total=self.total, completed=done))


def run(root: str, batch_id: str) -> None:
    from gen_jobs.generate import GenerateArgs, generate

    batches = BatchStore(root)
    spec = json.loads(storage.read_bytes(batches.job_spec_uri(batch_id)))
    record = batches.get(batch_id)
    problems, model, total = validate(spec["input"], record.endpoint, spec["kinds"])
    if problems:
        batches.update(batch_id, status="failed", failed_at=now(), errors=BatchErrors(data=problems),
                       request_counts=RequestCounts(total=total))
        print(f"batch {batch_id}: the input file failed validation ({len(problems)} problem(s) listed)")
        return
    if batches.get(batch_id).status == "cancelling":
        batches.update(batch_id, status="cancelled", cancelled_at=now(), request_counts=RequestCounts(total=total))
        return
    batches.update(batch_id, status="in_progress", in_progress_at=now(), model=model,
                   request_counts=RequestCounts(total=total))
    watcher = Watcher(batches, batch_id, total, spec["rows_per_shard"])
    watcher.start()
    data = batches.data_uri(batch_id)
    try:
        generate(GenerateArgs(checkpoint=spec["models"][model], requests=spec["input"], out=data,
                              rows_per_shard=spec["rows_per_shard"], workers=spec["workers"], resume=True, card=False))
    except KeyboardInterrupt:
        if not watcher.cancelled:
            raise
    finally:
        watcher.stop.set()
    cancelled = watcher.cancelled
    if not cancelled:
        batches.update(batch_id, status="finalizing", finalizing_at=now())
    files = FileStore(spec["files_root"])
    output, errors, usage = write_outputs(files, batch_id, data)
    counts = RequestCounts(total=total, completed=output.lines, failed=errors.lines)
    step = {"status": "cancelled", "cancelled_at": now()} if cancelled else {"status": "completed", "completed_at": now()}
    batches.update(batch_id, output_file_id=output.id, error_file_id=errors.id if errors.lines else None,
                   request_counts=counts, usage=usage, **step)
    if not errors.lines:
        files.delete(errors.id)
    print(f"batch {batch_id}: {step['status']}: {counts.completed} answered, {counts.failed} errors of {total}")


def main(argv: list[str] | None = None) -> int:
    root, batch_id = (sys.argv[1:] if argv is None else argv)[:2]
    run(root, batch_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
