"""Row sources: what each row of a dataset is made from, described in the dataset's identity.

    --num-samples N   ids:     row i is (id i, its seed)
    --prompts URI     prompts: row i is sample i % K of prompt i // K (K = --samples-per-prompt)
    --input URI       images:  row i is sample i % K of input image i // K
    --requests URI    requests: row i is request line i of an OpenAI batch input file (gen_jobs.data.requests)

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
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.data.columns import object_column
from gen_jobs.data.images import IMAGE_SUFFIXES


class RowSource(BaseModel):
    """What the rows are made from; part of the dataset identity."""

    kind: Literal["ids", "prompts", "images", "requests"] = "ids"
    uri: str | None = None  # the input (prompts file, image folder or Parquet, requests file)
    column: str | None = None  # the input's column (Parquet, JSONL)
    sha256: str | None = None  # digest of the input's bytes, in source order
    inputs: int = 0  # input rows (prompts or images)
    samples_per_input: int = Field(1, gt=0)
    # {file: "size:mtime"} taken before the digest's read; not part of the identity (a copy of
    # the same bytes is the same input). Writers compare them to see the input change mid-job.
    stamps: dict[str, str | None] | None = Field(None, exclude=True)
    # Suffixes of files a prompt may name (the family's `prompt_files`): such a prompt's row is made
    # from the file's bytes, which the digest covers. Implied by the family, so not in the identity.
    file_suffixes: list[str] = Field(default_factory=list, exclude=True)

    def differences(self, other: "RowSource") -> list[str]:
        """What would change the rows (the input's location does not, its content does)."""
        fields = [f for f in RowSource.model_fields if f not in ("uri", "stamps", "file_suffixes")]
        return [f"input {f}" for f in fields if getattr(self, f) != getattr(other, f)]


# ---------------------------------------------------------------- planning (driver)


def plan_prompts(uri: str, column: str, samples_per_input: int, file_suffixes: tuple[str, ...] = ()) -> RowSource:
    """A prompts source: Parquet or JSONL, every prompt checked once, in bounded memory.

    The file is read in pieces (digested as it streams; JSONL lines checked one
    by one; of Parquet only the prompt column, batch by batch): planning a large
    file holds no more of it than a piece. With `file_suffixes` (a family whose
    prompts may be files, e.g. MIDI primers), a prompt ending in one of them
    names a file (relative to the prompts file, or absolute, or s3://) whose
    bytes make the row; those files are digested too, and Parquet cells may hold
    such a file's bytes directly.
    """
    if not storage.exists(uri):
        raise UserError(f"prompts file {uri} does not exist")
    stamps = dict(zip([uri], storage.stamps([uri])))  # before the read: a later write changes the stamp
    digest = hashlib.sha256()
    if uri.endswith(".jsonl"):
        prompts = jsonl_values(uri, _digested_lines(uri, digest), column, "--prompt-column")
    else:
        for chunk in storage.read_chunks(uri):
            digest.update(chunk)
        prompts = _parquet_prompts(uri, column, binary_ok=bool(file_suffixes))
    count, named = 0, {}
    for prompt in prompts:
        count += 1
        if named_file(prompt, file_suffixes):
            named[prompt] = None
    if count == 0:
        raise UserError(f"{uri} holds no prompts")
    for name in named:  # in first-use order
        target = prompt_file(uri, name)
        if not storage.exists(target):
            raise UserError(f"{uri}: the prompt {name!r} names {target}, which does not exist")
        stamps[target] = storage.stamps([target])[0]
        size = storage.size(target)
        digest.update(f"\0{name}\0{size}\0".encode())
        for chunk in storage.read_chunks(target):
            digest.update(chunk)
    return RowSource(kind="prompts", uri=uri, column=column, sha256=digest.hexdigest(), inputs=count,
                     samples_per_input=samples_per_input, stamps=stamps, file_suffixes=list(file_suffixes))


def _digested_lines(uri: str, digest) -> Iterator[bytes]:
    """A file's lines, split at b"\n" alone (JSON Lines), read in pieces that also feed `digest`."""
    rest = b""
    for chunk in storage.read_chunks(uri):
        digest.update(chunk)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    yield rest


def named_file(prompt, suffixes) -> bool:
    """Whether a prompt names a file (it is text ending in one of the family's prompt-file suffixes)."""
    return bool(suffixes) and isinstance(prompt, str) and prompt.lower().endswith(tuple(suffixes))


def prompt_file(prompts_uri: str, name: str) -> str:
    """The URI a file-naming prompt means: s3:// or absolute as given, else beside the prompts file."""
    import os

    if storage.is_s3(name) or os.path.isabs(name):
        return name
    folder = prompts_uri.rsplit("/", 1)[0] if "/" in prompts_uri else "."
    if storage.is_s3(folder):
        return storage.join(folder, name)
    return os.path.normpath(os.path.join(folder, name))  # the user's own file: `../primers/a.mid` is theirs to name


def plan_images(uri: str, column: str, samples_per_input: int) -> RowSource:
    """An image source: a folder/prefix of image files, or Parquet file(s) with an image column."""
    entries = _input_entries(uri)  # stamps taken before the reads: a later write changes a file's stamp
    stamps = {f: stamp for f, (_, stamp) in entries.items()}
    digest = hashlib.sha256()
    count = 0
    for f, (name, _) in entries.items():  # each file digested in pieces, never held whole
        digest.update(f"{name}\0{storage.size(f)}\0".encode())
        for chunk in storage.read_chunks(f):
            digest.update(chunk)
        if f.endswith(".parquet"):
            fs, path = storage.resolve(f)
            parquet = pq.ParquetFile(path, filesystem=fs)  # the footer only
            if column not in parquet.schema_arrow.names:
                raise UserError(f"{f} has no column {column!r} (columns: {', '.join(parquet.schema_arrow.names)}); "
                                "set --input-column")
            count += parquet.metadata.num_rows
        else:
            count += 1
    if count == 0:
        raise UserError(f"{uri} holds no images")
    return RowSource(kind="images", uri=uri, column=column, sha256=digest.hexdigest(), inputs=count,
                     samples_per_input=samples_per_input, stamps=stamps)


def input_files(uri: str) -> list[str]:
    """The files of an image input in source order: Parquet files if there are any, else image files."""
    return list(input_listing(uri))


def input_listing(uri: str) -> dict[str, str | None]:
    """{file: stamp} of an image input, in source order (see `input_files`), from one listing."""
    return {f: stamp for f, (_, stamp) in _input_entries(uri).items()}


def _input_entries(uri: str) -> dict[str, tuple[str, str | None]]:
    """{file URI: (its name inside the input folder, stamp)} of an image input, in source order."""
    if not storage.exists(uri):
        raise UserError(f"input {uri} does not exist: give a folder of images, a Parquet file or folder, or an s3:// prefix")
    if not storage.is_dir(uri):
        if not uri.endswith((".parquet", *IMAGE_SUFFIXES)):
            raise UserError(f"input {uri} is neither Parquet nor an image ({', '.join(IMAGE_SUFFIXES)})")
        return {uri: (uri.rstrip("/").rsplit("/", 1)[-1], storage.stamps([uri])[0])}
    listing = storage.list_stamped(uri, recursive=True)  # {name inside uri: stamp}
    parquet = [name for name in listing if name.endswith(".parquet")]
    images = [name for name in listing if name.lower().endswith(IMAGE_SUFFIXES)]
    if parquet and images:
        raise UserError(f"{uri} mixes Parquet files and image files; give one kind of input")
    if not parquet and not images:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) or Parquet files under {uri}")
    return {storage.join(uri, name): (name, listing[name]) for name in sorted(parquet or images)}


def jsonl_column(uri: str, data: bytes, column: str, setting: str) -> list[str | None]:
    """One text field of every record of a JSONL file's bytes (None where it is null); see jsonl_values."""
    return list(jsonl_values(uri, data.split(b"\n"), column, setting))


def jsonl_values(uri: str, lines: Iterable[bytes], column: str, setting: str) -> Iterator[str | None]:
    """One text field of each record of a JSONL file's lines (None where it is null), as they come.

    A line that is not UTF-8 or not JSON, a record without the field, or a value
    that is neither text nor null is a UserError naming the line and `setting`
    (the flag or recipe key that picks the field). Lines end at "\n" alone (JSON
    Lines): str.splitlines would also cut at U+2028 and other separators that a
    JSON string may hold raw.
    """
    for n, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{uri} is not UTF-8 text (line {n}, byte {e.start}); save it as UTF-8 JSONL") from e
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
        yield record[column]


def _parquet_prompts(uri: str, column: str, binary_ok: bool = False) -> Iterator:
    """The prompt column of a Parquet file, value by value, read batch by batch (no other column is read)."""
    fs, path = storage.resolve(uri)
    try:
        parquet = pq.ParquetFile(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{uri} is neither Parquet nor .jsonl ({e})") from e
    names = parquet.schema_arrow.names
    if column not in names:
        raise UserError(f"{uri} has no column {column!r} (columns: {', '.join(names)}); set --prompt-column")
    kind = parquet.schema_arrow.field(column).type
    binary = binary_ok and (pa.types.is_binary(kind) or pa.types.is_large_binary(kind))
    if not (binary or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        wanted = "text or file bytes" if binary_ok else "text"
        raise UserError(f"{uri}: column {column!r} holds {kind}, not {wanted}; set --prompt-column")
    for batch in parquet.iter_batches(batch_size=4096, columns=[column]):
        yield from batch.column(0).to_pylist()


# ---------------------------------------------------------------- reading a shard's slice (workers)


def read_inputs(source: RowSource, start: int, stop: int, cache: dict | None = None) -> np.ndarray:
    """Input rows [start, stop) as an object array (str / bytes / None), reading only what holds them.

    `cache` is a dict the caller keeps (e.g. per Ray Data actor): it saves listing a folder and
    reading Parquet footers more than once. With cache["stamps"] (the planned `RowSource.stamps`)
    the file list is the planned one, and every file read must still carry its planned stamp:
    an input rewritten mid-job is a UserError, never rows made from other bytes.
    """
    cache = {} if cache is None else cache
    stamps = cache.get("stamps")
    if source.kind == "prompts":
        if source.uri.endswith(".jsonl"):
            rows, read = _jsonl_slice(source, start, stop), [source.uri]
        else:
            values, read = _parquet_slice([source.uri], source.column, start, stop, cache, "--prompt-column")
            rows = object_column(values)
        for i, prompt in enumerate(rows):  # prompts that name files (music primers): the rows get the files' bytes
            if named_file(prompt, source.file_suffixes):
                read.append(prompt_file(source.uri, prompt))
                rows[i] = storage.read_bytes(read[-1])
    else:
        try:
            rows, read = image_rows(_planned_files(source, cache), source.column, start, stop, cache)
        except UserError:  # a file gone since planning: say so, as for one rewritten
            if stamps is not None:
                files = _planned_files(source, cache)
                check_unchanged(files if files[0].endswith(".parquet") else files[start:stop], stamps)
            raise
    if stamps is not None:
        check_unchanged(read, stamps)
    return rows


def input_names(source: RowSource, start: int, stop: int, cache: dict | None = None) -> np.ndarray:
    """Where image input rows [start, stop) come from: each file's URI, or (Parquet) the input row's index."""
    files = _planned_files(source, {} if cache is None else cache)
    if files[0].endswith(".parquet"):
        return object_column([str(i) for i in range(start, stop)])
    return object_column(files[start:stop])


def _planned_files(source: RowSource, cache: dict) -> list[str]:
    """An image source's files in source order: the planned list (cache["stamps"]) if there is one, else a listing.

    Kept in `cache["files"]`, so one actor lists a folder at most once.
    """
    if "files" not in cache:
        stamps = cache.get("stamps")
        cache["files"] = list(stamps) if stamps else input_files(source.uri)
    return cache["files"]


def image_rows(files: list[str], column: str, start: int, stop: int, cache: dict) -> tuple[np.ndarray, list[str]]:
    """(the encoded images of input rows [start, stop) as an object array of bytes, the files read).

    `files` are image files (one row each) or Parquet files whose `column` holds image bytes
    (or HuggingFace's {"bytes", "path"} image structs).
    """
    if files[0].endswith(".parquet"):
        cells, read = _parquet_slice(files, column, start, stop, cache)
        return object_column([cell["bytes"] if isinstance(cell, dict) else cell for cell in cells]), read
    read = files[start:stop]
    return object_column([storage.read_bytes(f) for f in read]), read


def check_unchanged(files: list[str], stamps: dict[str, str | None]) -> None:
    """UserError if any of `files` no longer carries the stamp it had when the job was planned."""
    changed = [f for f, now in zip(files, storage.stamps(files)) if now is None or now != stamps.get(f)]
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise UserError(f"input {changed[0]}{more} changed or went away after this job was planned, so its rows "
                        "would not match the dataset's recorded input digest; restore it, or start again with --overwrite")


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


def _parquet_slice(files: list[str], column: str, start: int, stop: int, cache: dict,
                   setting: str = "--input-column") -> tuple[list, list[str]]:
    """(rows [start, stop) of `column` across `files`, the files read), reading only the row groups that hold them."""
    groups = cache.get("row_groups")
    if groups is None:  # (file, row group, first row) in source order
        groups, first = [], 0
        for f in files:
            fs, path = storage.resolve(f)
            parquet = pq.ParquetFile(path, filesystem=fs)
            if column not in parquet.schema_arrow.names:
                raise UserError(f"{f} has no column {column!r} (columns: {', '.join(parquet.schema_arrow.names)}); "
                                f"set {setting}")
            meta = parquet.metadata
            for g in range(meta.num_row_groups):
                groups.append((f, g, first))
                first += meta.row_group(g).num_rows
        groups.append((None, None, first))
        cache["row_groups"] = groups
    out: list = []
    read: list[str] = []
    for (f, g, first), (_, _, end) in zip(groups, groups[1:]):
        if end <= start or first >= stop:
            continue
        fs, path = storage.resolve(f)
        values = pq.ParquetFile(path, filesystem=fs).read_row_group(g, columns=[column]).column(column).to_pylist()
        out.extend(values[max(start - first, 0): stop - first])
        if f not in read:
            read.append(f)
    return out, read
