"""Row sources: what each row of a dataset is made from, described in the dataset's identity.

    --num-samples N   ids:     row i is (id i, its seed)
    --prompts URI     prompts: row i is sample i % K of prompt i // K (K = --samples-per-prompt)
    --input URI       images:  row i is sample i % K of input image i // K

A source is planned once, in the driver (`plan_prompts`, `plan_images`): it
checks the input, counts its rows and takes a content digest (sha256 of the
bytes, in the fixed order below), which go into the identity so that
`--resume` refuses a changed input. Each shard then reads only its own slice
(`read_inputs`): the Parquet row groups that hold its rows (one column), the
lines of a JSONL file up to its last row, or its slice of the sorted file list.

Order: a folder or prefix is read in sorted path order (recursively); a
Parquet folder in sorted file order, rows in file order.

Nulls keep their place, never shifting the rows after them:
    prompts  a null prompt (Parquet null, JSONL null) makes an unprompted row
             (`prompt` null), as `--num-samples` rows are
    images   a null image cell comes through as None; the family writes that
             row with a null output and says why (rows are never dropped)
A prompt that is neither a string nor null is an error naming its line or row.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from gen_jobs import storage
from gen_jobs.columns import object_column
from gen_jobs.errors import UserError
from gen_jobs.images import IMAGE_SUFFIXES


class RowSource(BaseModel):
    """What the rows are made from; part of the dataset identity."""

    kind: Literal["ids", "prompts", "images"] = "ids"
    uri: str | None = None  # the input (prompts file, image folder or Parquet)
    column: str | None = None  # the input's column (Parquet, JSONL)
    sha256: str | None = None  # digest of the input's bytes, in source order
    inputs: int = 0  # input rows (prompts or images)
    samples_per_input: int = Field(1, gt=0)

    def differences(self, other: "RowSource") -> list[str]:
        """What would change the rows (the input's location does not, its content does)."""
        fields = [f for f in RowSource.model_fields if f != "uri"]
        return [f"input {f}" for f in fields if getattr(self, f) != getattr(other, f)]


# ---------------------------------------------------------------- planning (driver)


def plan_prompts(uri: str, column: str, samples_per_input: int) -> RowSource:
    """A prompts source: Parquet or JSONL, checked whole once (the digest reads it anyway)."""
    if not storage.exists(uri):
        raise UserError(f"prompts file {uri} does not exist")
    data = storage.read_bytes(uri)
    if uri.endswith(".jsonl"):
        prompts = jsonl_column(uri, data, column, "--prompt-column")
    else:
        prompts = _parquet_prompts(uri, data, column)
    if len(prompts) == 0:
        raise UserError(f"{uri} holds no prompts")
    return RowSource(kind="prompts", uri=uri, column=column, sha256=hashlib.sha256(data).hexdigest(),
                     inputs=len(prompts), samples_per_input=samples_per_input)


def plan_images(uri: str, column: str, samples_per_input: int) -> RowSource:
    """An image source: a folder/prefix of image files, or Parquet file(s) with an image column."""
    files = input_files(uri)
    digest = hashlib.sha256()
    count = 0
    for f in files:
        data = storage.read_bytes(f)
        digest.update(f"{_relative(uri, f)}\0{len(data)}\0".encode())
        digest.update(data)
        if f.endswith(".parquet"):
            schema = pq.read_schema(io.BytesIO(data))
            if column not in schema.names:
                raise UserError(f"{f} has no column {column!r} (columns: {', '.join(schema.names)}); set --input-column")
            count += pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
        else:
            count += 1
    if count == 0:
        raise UserError(f"{uri} holds no images")
    return RowSource(kind="images", uri=uri, column=column, sha256=digest.hexdigest(), inputs=count,
                     samples_per_input=samples_per_input)


def input_files(uri: str) -> list[str]:
    """The files of an image input in source order: Parquet files if there are any, else image files."""
    if not storage.exists(uri):
        raise UserError(f"input {uri} does not exist: give a folder of images, a Parquet file or folder, or an s3:// prefix")
    if not storage.is_dir(uri):
        if not uri.endswith((".parquet", *IMAGE_SUFFIXES)):
            raise UserError(f"input {uri} is neither Parquet nor an image ({', '.join(IMAGE_SUFFIXES)})")
        return [uri]
    files = storage.list_files(uri, recursive=True)
    parquet = [f for f in files if f.endswith(".parquet")]
    images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if parquet and images:
        raise UserError(f"{uri} mixes Parquet files and image files; give one kind of input")
    if not parquet and not images:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) or Parquet files under {uri}")
    return sorted(parquet or images)


def _relative(root: str, uri: str) -> str:
    return uri[len(root.rstrip("/")) + 1:] if uri != root else uri.rsplit("/", 1)[-1]


def jsonl_column(uri: str, data: bytes, column: str, setting: str) -> list[str | None]:
    """One text field of every record of a JSONL file (None where it is null).

    A line that is not JSON, a record without the field, or a value that is
    neither text nor null is a UserError naming the line and `setting` (the
    flag or recipe key that picks the field).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{uri} is not UTF-8 text (byte {e.start}); save it as UTF-8 JSONL") from e
    values = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{uri} line {n} is not JSON ({e.msg})") from e
        if not isinstance(record, dict) or column not in record:
            raise UserError(f"{uri}: line {n} has no field {column!r}; set {setting}")
        if record[column] is not None and not isinstance(record[column], str):
            raise UserError(f"{uri}: line {n}'s {column!r} is {type(record[column]).__name__}, not a string or null")
        if isinstance(record[column], str):
            try:
                record[column].encode("utf-8")
            except UnicodeEncodeError:  # a JSON escape such as \ud800: no tokenizer could ever encode it
                raise UserError(f"{uri}: line {n}'s {column!r} holds a lone surrogate escape, which is not text") from None
        values.append(record[column])
    return values


def _parquet_prompts(uri: str, data: bytes, column: str) -> pa.ChunkedArray:
    try:
        table = pq.read_table(io.BytesIO(data), columns=None)
    except pa.ArrowInvalid as e:
        raise UserError(f"{uri} is neither Parquet nor .jsonl ({e})") from e
    if column not in table.column_names:
        raise UserError(f"{uri} has no column {column!r} (columns: {', '.join(table.column_names)}); set --prompt-column")
    values = table.column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type) or pa.types.is_null(values.type)):
        raise UserError(f"{uri}: column {column!r} holds {values.type}, not text; set --prompt-column")
    return values


# ---------------------------------------------------------------- reading a shard's slice (workers)


def read_inputs(source: RowSource, start: int, stop: int, cache: dict | None = None) -> np.ndarray:
    """Input rows [start, stop) as an object array (str / bytes / None), reading only what holds them.

    `cache` (a dict the caller keeps, e.g. per Ray Data actor) saves listing a folder once per actor.
    """
    if source.kind == "prompts" and source.uri.endswith(".jsonl"):
        return _jsonl_slice(source, start, stop)
    if source.kind == "prompts":
        return object_column(_parquet_slice([source.uri], source.column, start, stop, cache))
    files = (cache or {}).get("files") or input_files(source.uri)
    if cache is not None:
        cache["files"] = files
    if files[0].endswith(".parquet"):
        cells = _parquet_slice(files, source.column, start, stop, cache)
        return object_column([cell["bytes"] if isinstance(cell, dict) else cell for cell in cells])
    return object_column([storage.read_bytes(f) for f in files[start:stop]])


def _jsonl_slice(source: RowSource, start: int, stop: int) -> np.ndarray:
    fs, path = storage.resolve(source.uri)
    out, n = [], 0
    with fs.open_input_stream(path) as f:
        for line in io.TextIOWrapper(f, encoding="utf-8"):
            if not line.strip():
                continue
            if n >= start:
                out.append(json.loads(line)[source.column])
            n += 1
            if n >= stop:
                break
    return object_column(out)


def _parquet_slice(files: list[str], column: str, start: int, stop: int, cache: dict | None) -> list:
    """Rows [start, stop) of `column` across `files`, reading only the row groups that hold them."""
    groups = (cache or {}).get("row_groups")
    if groups is None:  # (file, row group, first row) in source order
        groups, first = [], 0
        for f in files:
            fs, path = storage.resolve(f)
            meta = pq.ParquetFile(path, filesystem=fs).metadata
            for g in range(meta.num_row_groups):
                groups.append((f, g, first))
                first += meta.row_group(g).num_rows
        groups.append((None, None, first))
        if cache is not None:
            cache["row_groups"] = groups
    out: list = []
    for (f, g, first), (_, _, end) in zip(groups, groups[1:]):
        if end <= start or first >= stop:
            continue
        fs, path = storage.resolve(f)
        values = pq.ParquetFile(path, filesystem=fs).read_row_group(g, columns=[column]).column(column).to_pylist()
        out.extend(values[max(start - first, 0): stop - first])
    return out
