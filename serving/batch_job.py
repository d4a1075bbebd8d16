"""One batch of the Batches API, run as a Ray job: validate its file, answer it, write its output files.

    python -m serving.batch_job STORAGE BATCH_ID      (submitted by serving.batches; submission id = BATCH_ID)

Steps, each written to the batch's record (serving.batches.BatchStore) as OpenAI's life cycle names it:
- validating: every line of the input file is checked (JSON, the four fields, a unique custom_id,
  `url` equal to the batch's endpoint, one model the server serves and that serves the endpoint);
  a file that fails is `failed`, with `errors` naming up to 100 lines as OpenAI's BatchError;
- in_progress: `raygen generate --requests` into `<storage>/batches/<id>/data` (a dataset like any:
  manifest, verify, resume); as each shard lands, its part of the output file (answers with status
  200) and of the error file (the others) is written, one line per request, `{"id", "custom_id",
  "response": {"status_code", "request_id", "body"}, "error"}`, and `request_counts` follows;
- finalizing: the parts of the last shards, then the two files' records (Files API, purpose
  batch_output: read back as one file each, a part at a time);
- completed, with output_file_id, error_file_id, request_counts and usage (tokens, for text).
A cancel (the record says `cancelling`) stops the generation between shards; the rows of the shards
already written go to the output files, and the batch is `cancelled`. So does the end of the batch's
completion window (`expires_at`), and the batch is `expired`: the requests it did not reach get error
lines with code `batch_expired`, as OpenAI writes them.
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


class Usage:
    """Tokens of a text batch's answers, added up as they pass."""

    def __init__(self) -> None:
        self.prompt, self.completion, self.counted = 0, 0, False

    def add(self, body: dict) -> None:
        """An answer's tokens (its `usage`, which image and music answers have not)."""
        if usage := body.get("usage"):
            self.add_tokens(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    def add_tokens(self, prompt: int, completion: int) -> None:
        self.counted = True
        self.prompt += prompt
        self.completion += completion

    def answer(self) -> dict | None:
        """OpenAI's batch `usage`, or None when no answer counted tokens (images, music)."""
        if not self.counted:
            return None
        return {"input_tokens": self.prompt, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.completion, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt + self.completion}


EXPIRED = {"code": "batch_expired", "message": "This request could not be executed before the completion window "
                                              "expired."}  # (OpenAI's words for a line a batch did not reach)


def output_line(batch_id: str, custom_id: str, response: dict | None, error: dict | None = None) -> bytes:
    """One line of a batch's output or error file (OpenAI's batch output format)."""
    line = {"id": f"batch_req_{line_digest(batch_id, custom_id)}", "custom_id": custom_id, "response": response,
            "error": error}
    return (json.dumps(line, ensure_ascii=False) + "\n").encode()


def shard_rows(uri: str, columns: list[str]) -> Iterator[dict]:
    """A Parquet shard's rows, a row group at a time."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(uri)
    shard = pq.ParquetFile(path, filesystem=fs)
    for group in range(shard.num_row_groups):
        yield from shard.read_row_group(group, columns=columns).to_pylist()


class Outputs:
    """A batch's output and error files, written a part a shard while the shards land (`write_new_shards`):
    for the dataset's shard `part-K.parquet`, `part-K.jsonl` in each file's parts folder (its answers with
    status 200, and the others), then `<batch>/outputs/part-K.json`, the shard's counts and tokens, which
    marks its parts whole. `finish` writes the parts of the shards left and the two files' records."""

    def __init__(self, files: FileStore, batches: BatchStore, batch_id: str):
        self.files, self.batch_id = files, batch_id
        self.data = batches.data_uri(batch_id)
        self.summaries = storage.join(batches.uri(batch_id), "outputs")
        # Known before the files exist, and the same for a job started again: its parts are found again.
        self.output_id = f"file-{line_digest(batch_id, 'output file')}"
        self.error_id = f"file-{line_digest(batch_id, 'error file')}"
        # Running totals of the shards whose parts are written, so that a watcher's tick reads no summary:
        # seeded once from those a job started before this one wrote, then added to shard by shard.
        self.written: set[str] = set()
        self.completed, self.failed, self.usage = 0, 0, Usage()
        for stem in self._names(self.summaries, ".json"):
            self._count(stem, json.loads(storage.read_bytes(storage.join(self.summaries, f"{stem}.json"))))

    def _names(self, folder: str, suffix: str) -> list[str]:
        names = storage.list_names(folder) if storage.exists(folder) else []
        return sorted(n[:-len(suffix)] for n in names if n.startswith("part-") and n.endswith(suffix))

    def _count(self, stem: str, summary: dict) -> None:
        self.written.add(stem)
        self.completed += summary["completed"]
        self.failed += summary["failed"]
        if summary["counted"]:
            self.usage.add_tokens(summary["prompt_tokens"], summary["completion_tokens"])

    def write_new_shards(self) -> None:
        for stem in self._names(self.data, ".parquet"):
            if stem not in self.written:
                self._write_shard(stem)

    def _write_shard(self, stem: str) -> None:
        usage, completed, failed = Usage(), 0, 0
        output_uri = storage.join(self.files.parts_uri(self.output_id), f"{stem}.jsonl")
        error_uri = storage.join(self.files.parts_uri(self.error_id), f"{stem}.jsonl")
        with storage.AtomicWriter(output_uri) as output, storage.AtomicWriter(error_uri) as errors:
            for row in shard_rows(storage.join(self.data, f"{stem}.parquet"), ["custom_id", "status_code", "response"]):
                body = json.loads(row["response"])
                response = {"status_code": row["status_code"], "request_id": line_digest(self.batch_id, row["custom_id"]),
                            "body": body}
                (output if row["status_code"] == 200 else errors).write(output_line(self.batch_id, row["custom_id"],
                                                                                    response))
                if row["status_code"] == 200:
                    completed += 1
                    usage.add(body)
                else:
                    failed += 1
        summary = {"completed": completed, "failed": failed, "prompt_tokens": usage.prompt,
                   "completion_tokens": usage.completion, "counted": usage.counted}
        storage.write_bytes_atomic(storage.join(self.summaries, f"{stem}.json"), json.dumps(summary).encode())
        self._count(stem, summary)

    def totals(self) -> tuple[int, int, Usage]:
        """(answered, refused, tokens) of the shards whose parts are written."""
        return self.completed, self.failed, self.usage

    def finish(self, unfinished_input: str | None = None) -> tuple[FileRecord, FileRecord | None, int, int, Usage]:
        """(output file, error file or None, answered, failed, tokens). With `unfinished_input` (an expired
        batch's input file), each request no shard answered gets an error line, `batch_expired`."""
        self.write_new_shards()
        completed, failed, usage = self.completed, self.failed, self.usage
        if unfinished_input is not None:
            answered = {row["custom_id"] for stem in self._names(self.data, ".parquet")
                        for row in shard_rows(storage.join(self.data, f"{stem}.parquet"), ["custom_id"])}
            # ("unreached" sorts after every "part-": these lines come last)
            with storage.AtomicWriter(storage.join(self.files.parts_uri(self.error_id), "unreached.jsonl")) as errors:
                for line in checked_lines(unfinished_input):  # (validated when the batch began: each is a request)
                    if line.request["custom_id"] not in answered:
                        errors.write(output_line(self.batch_id, line.request["custom_id"], None, EXPIRED))
                        failed += 1
        output = self.files.add_parts_file(self.output_id, f"{self.batch_id}_output.jsonl", "batch_output", completed)
        if not failed:
            storage.remove_tree(self.files.parts_uri(self.error_id))  # (empty parts: no error file)
            return output, None, completed, failed, usage
        errors = self.files.add_parts_file(self.error_id, f"{self.batch_id}_error.jsonl", "batch_output", failed)
        return output, errors, completed, failed, usage


class Watcher(threading.Thread):
    """Every WATCH_S: the output parts of the shards that landed, and request_counts from them; on a cancel, or
    once the batch's completion window has passed (`expires_at`), SIGINT to this job (the generation stops
    between shards: the Ray Data pipeline shuts down and the lease is released). `ended` says which:
    "cancelled" or "expired"."""

    def __init__(self, batches: BatchStore, batch_id: str, total: int, outputs: Outputs):
        super().__init__(name="raygen-batch-watcher", daemon=True)
        self.batches, self.batch_id, self.total, self.outputs = batches, batch_id, total, outputs
        self.stop = threading.Event()
        self.ended: str | None = None

    def run(self) -> None:
        while not self.stop.wait(WATCH_S):
            try:
                if self.step():
                    return
            except Exception as e:  # storage out of reach for a moment: the next step tries again
                print(f"batch {self.batch_id}: watching the batch failed this time ({type(e).__name__}: {e})")

    def step(self) -> bool:
        """One look at the batch; True once this job has been told to stop."""
        record = self.batches.get(self.batch_id)
        if record.status == "cancelling" or (record.expires_at is not None and now() >= record.expires_at):
            self.ended = "cancelled" if record.status == "cancelling" else "expired"
            os.kill(os.getpid(), signal.SIGINT)
            return True
        self.outputs.write_new_shards()
        completed, failed, _ = self.outputs.totals()
        counts = RequestCounts(total=self.total, completed=completed, failed=failed)
        if counts != record.request_counts and record.status == "in_progress":
            self.batches.update(self.batch_id, request_counts=counts)
        return False


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
    outputs = Outputs(FileStore(spec["files_root"]), batches, batch_id)
    watcher = Watcher(batches, batch_id, total, outputs)
    watcher.start()
    try:
        generate(GenerateArgs(checkpoint=spec["models"][model], requests=spec["input"], out=batches.data_uri(batch_id),
                              rows_per_shard=spec["rows_per_shard"], workers=spec["workers"], resume=True, card=False))
    except KeyboardInterrupt:
        if watcher.ended is None:
            raise
    finally:
        watcher.stop.set()
        watcher.join()  # (it may be writing a shard's parts: finish writes the rest)
    ended = watcher.ended or "completed"
    if ended == "completed":
        batches.update(batch_id, status="finalizing", finalizing_at=now())
    output, errors, completed, failed, usage = outputs.finish(spec["input"] if ended == "expired" else None)
    counts = RequestCounts(total=total, completed=completed, failed=failed)
    batches.update(batch_id, output_file_id=output.id, error_file_id=errors.id if errors else None,
                   request_counts=counts, usage=usage.answer(), status=ended, **{f"{ended}_at": now()})
    print(f"batch {batch_id}: {ended}: {counts.completed} answered, {counts.failed} errors of {total}")


def main(argv: list[str] | None = None) -> int:
    root, batch_id = (sys.argv[1:] if argv is None else argv)[:2]
    run(root, batch_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
