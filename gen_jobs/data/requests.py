"""Requests as a row source: OpenAI's batch input format, answered by the model's own HTTP API code.

    raygen generate --checkpoint CKPT --requests FILE.jsonl --out OUT      (FILE local or s3://)

One request per line, as OpenAI's Batch API takes them:

    {"custom_id": "q-1", "method": "POST", "url": "/v1/completions", "body": {"model": "pydoc", "prompt": "def "}}

Row i is line i (blank lines do not count). Planning (`plan_requests`, in the driver) reads the
file once: every line must be a JSON object with a text `custom_id` unique in the file,
`"method": "POST"`, a text `url` and an object `body`; a file that breaks this is refused, naming
its first bad lines, before any row is written (OpenAI's "validating" step).

Each line is then answered as the online route answers it, on the ShardWriter, by an answerer the
generate command names (`serving.batch_lines.Answerer`: the data face imports no serving code): the
body is validated by the route's own schema and checks (serving.apis.Endpoint) and turned into
sampler rows by its API module, the rows of many lines are sampled together in the recipe's
micro-batches, and the API module writes each answer. A line the model cannot answer (an unknown
route, a route of another kind of model, an unknown field, a value out of range) gets OpenAI's
error body with its status code and does not stop the job. A line without a `seed` gets the row's
seed (from the dataset's seed and the row id, as every raygen row), put in its body, so the
answer records it; a line with one gets exactly what the online route answers for that body.

The rows: `id`, `seed` (the row's seed, as in every raygen dataset: it answers a line whose body names
none; every answer records the seeds it used, `choices[k].seed` or `data[k].seed`), `custom_id`,
`status_code` and `response` (the answer body as JSON text); then, for a model whose answers are
files, the media columns (the answer's files decoded, one list a row, empty for an error): `images`
(PNGs, as HuggingFace Images) for an image model, `midi` and `audio` (WAVs, as HuggingFace Audio)
for a music model, each line's files in the one its `response_format` asks for.
An answer's `id` is derived from the dataset's input digest and the line's custom_id, and its
`created` is 0, so a row stays a pure function of (checkpoint, recipe, seed, line): the batch's
own record says when it ran.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError

MAX_LISTED = 5  # bad lines named in one error
FIELDS = ("custom_id", "method", "url", "body")


# ---------------------------------------------------------------- planning (driver)


class CheckedLine(NamedTuple):
    """One request line of a batch input file, checked on its own and against the lines before it."""

    number: int  # the line's number in the file, from 1 (blank lines have numbers but are not requests)
    request: dict | None  # the parsed line; None when it is not a request (a duplicate custom_id still is one)
    code: str | None  # "invalid_request" or "duplicate_custom_id" (OpenAI's BatchError codes), None when fine
    problem: str | None  # what is wrong, in words


def checked_lines(uri: str, digest=None) -> Iterator[CheckedLine]:
    """Every request line of a batch input file, streamed (the file is never held whole) and checked: JSON,
    the four fields (`line_problem`), a custom_id no earlier line has. `digest` (a hashlib object), when
    given, is fed the file's bytes as they are read."""
    from gen_jobs.data.rows import _digested_lines

    seen: dict[bytes, int] = {}  # 16-byte digest of each custom_id -> its line (a 50,000-line file: ~5 MB)
    for number, raw in enumerate(_digested_lines(uri, digest or hashlib.sha256()), start=1):
        if not raw.strip():
            continue
        problem = line_problem(raw)
        if problem is not None:
            yield CheckedLine(number, None, "invalid_request", problem)
            continue
        request = json.loads(raw)
        key = hashlib.blake2b(request["custom_id"].encode(), digest_size=16).digest()
        if key in seen:
            yield CheckedLine(number, request, "duplicate_custom_id",
                              f"custom_id {request['custom_id']!r} is also line {seen[key]}'s; each request needs its own")
            continue
        seen[key] = number
        yield CheckedLine(number, request, None, None)


def plan_requests(uri: str):
    """A requests source: every line checked once, streamed (`checked_lines`)."""
    from gen_jobs.data.rows import RowSource

    if not storage.exists(uri):
        raise UserError(f"requests file {uri} does not exist")
    stamps = dict(zip([uri], storage.stamps([uri])))  # before the read: a later write changes the stamp
    digest = hashlib.sha256()
    problems: list[str] = []
    count = 0
    for line in checked_lines(uri, digest):
        count += 1
        if line.problem is not None:
            problems.append(f"line {line.number}: {line.problem}")
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise UserError(f"{uri} is not a batch input file: {'; '.join(problems[:MAX_LISTED])}{more}. Each line is "
                        '{"custom_id": "...", "method": "POST", "url": "/v1/...", "body": {...}}')
    if count == 0:
        raise UserError(f"{uri} holds no requests")
    return RowSource(kind="requests", uri=uri, sha256=digest.hexdigest(), inputs=count, stamps=stamps)


def line_problem(raw: bytes) -> str | None:
    """What is wrong with one line of a batch input file, or None."""
    try:
        record = json.loads(raw)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg})"
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [f for f in FIELDS if f not in record]
    if missing:
        return f"no {', '.join(missing)}"
    extra = sorted(set(record) - set(FIELDS))
    if extra:
        return f"unknown field {extra[0]!r}"
    if not isinstance(record["custom_id"], str) or not record["custom_id"]:
        return "custom_id must be a non-empty string"
    if record["method"] != "POST":
        return f"method is {record['method']!r}; batch requests are POST"
    if not isinstance(record["url"], str):
        return "url must be a string such as /v1/completions"
    if not isinstance(record["body"], dict):
        return "body must be a JSON object"
    return None


# ---------------------------------------------------------------- a shard's lines (workers)


def read_lines(uri: str, start: int, stop: int) -> list[dict]:
    """Requests [start, stop) of a batch input file, parsed (blank lines do not count)."""
    fs, path = storage.resolve(uri)
    out, n = [], 0
    with fs.open_input_stream(path) as f:
        for line in io.TextIOWrapper(f, encoding="utf-8", newline="\n"):
            if not line.strip():
                continue
            if n >= start:
                out.append(json.loads(line))
            n += 1
            if n >= stop:
                break
    return out


SCHEMA = pa.schema([("id", pa.int64()), ("seed", pa.int64()), ("custom_id", pa.string()),
                    ("status_code", pa.int32()), ("response", pa.string())])


class Answer(NamedTuple):
    status_code: int
    body: dict  # the route's answer, or OpenAI's {"error": {...}}


def answers_table(ids: np.ndarray, seeds: np.ndarray, lines: list[dict], answers: list[Answer],
                  media: dict[str, pa.Array] | None = None) -> pa.Table:
    """The dataset rows of answered lines (`seeds`: the rows' seeds, as in every raygen dataset), then the
    answers' `media` columns (decoded images, MIDI, WAV: the answerer's `media_columns`)."""
    from gen_jobs.data.columns import with_features

    table = pa.table({
        "id": pa.array(ids, pa.int64()),
        "seed": pa.array(seeds, pa.int64()),
        "custom_id": pa.array([line["custom_id"] for line in lines], pa.string()),
        "status_code": pa.array([a.status_code for a in answers], pa.int32()),
        "response": pa.array([json.dumps(a.body, ensure_ascii=False) for a in answers], pa.string()),
    }, schema=SCHEMA)
    for name, column in (media or {}).items():
        table = table.append_column(name, column)
    return with_features(table, media={"audio": "Audio"})


def answered_batches(answer: Callable[[list[dict], np.ndarray], list[Answer]], identity, k: int, micro_batch: int,
                     input_cache: dict | None) -> Iterator[pa.Table]:
    """Shard k's rows of a requests dataset, `micro_batch` lines at a time (`answer`: lines, their rows' seeds ->
    their answers, and `answer.media_columns(lines, answers)` -> the answers' media columns;
    serving.batch_lines.Answerer)."""
    from gen_jobs.core.row_seed import row_seeds
    from gen_jobs.data.rows import check_unchanged

    source = identity.source
    ids = np.arange(identity.shard_ids(k).start, identity.shard_ids(k).stop, dtype=np.int64)
    lines = read_lines(source.uri, int(ids[0]), int(ids[-1]) + 1)
    stamps = (input_cache or {}).get("stamps")
    if stamps is not None:  # the file read must be the one planned
        check_unchanged([source.uri], stamps)
    for i in range(0, len(ids), micro_batch):
        part, seeds, some = ids[i: i + micro_batch], row_seeds(identity.seed, ids[i: i + micro_batch]), lines[i: i + micro_batch]
        answers = answer(some, seeds)
        yield answers_table(part, seeds, some, answers, answer.media_columns(some, answers))
