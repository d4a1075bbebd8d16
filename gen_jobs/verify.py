"""Check a dataset against its manifest.

    raygen verify URI [--deep]
    python -m gen_jobs.verify URI [--deep]

From one listing of the folder (time proportional to the number of shards, not
their bytes): every shard the manifest lists must be present with the size it
records, the shards' ids must run contiguously from 0 to the manifest's row
count, and shard-named files the manifest does not list are flagged as strays.
raygen writes every file atomically, so a file of the recorded size under the
recorded name is the one it wrote; a change of its bytes that keeps its size is
what `--deep` finds. With `--deep` every shard is also read (16 at a time): it must
match its sha256, carry the dataset's tag, have the manifest's schema, and hold
its row count of contiguous ids from its first id, each with the seed its id and
the base seed give. Exit 0 with a summary and the dataset identity it checked
(family, checkpoint digest, seed, row source, noise version, device kind, torch
version), or exit 1 naming each bad file.
"""

from __future__ import annotations

import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gen_jobs import storage
from gen_jobs.cli_args import ArgumentParser, run_main
from gen_jobs.errors import UserError
from gen_jobs.manifest import (
    MANIFEST,
    SHARD_PATTERN,
    SHARD_TAG,
    Manifest,
    ShardEntry,
    read_manifest,
    schema_description,
    sha256,
)
from gen_jobs.row_seed import row_seeds

READERS = 16  # shards read at once by --deep: object stores answer many reads in parallel


def problems(out: str, deep: bool = True) -> tuple[list[str], str]:
    """(one line per bad file, summary line). Raises UserError when there is no manifest.

    `deep`: also read every shard (checksum, tag, schema, ids, seeds); else the listing alone.
    """
    manifest = read_manifest(out)
    sizes = {uri.rsplit("/", 1)[-1]: size for uri, size in storage.list_entries(out).items()}
    shard_sizes = {name: size for name, size in sizes.items() if SHARD_PATTERN.match(name)}
    if manifest is None:
        hint = " (an unfinished run: complete it with raygen generate ... --resume)" if shard_sizes else ""
        raise UserError(f"no {MANIFEST} in {out}: not a raygen dataset, or not finished{hint}")
    bad, present = [], []
    next_id = 0
    for entry in manifest.shards:
        if entry.first_id != next_id:
            bad.append(f"{entry.file}: manifest says first id {entry.first_id}, expected {next_id}")
        next_id = entry.first_id + entry.rows
        if entry.file not in shard_sizes:
            bad.append(f"{entry.file}: missing")
        elif entry.bytes is not None and shard_sizes[entry.file] != entry.bytes:
            bad.append(f"{entry.file}: {shard_sizes[entry.file]:,} bytes, manifest says {entry.bytes:,} "
                       "(truncated, replaced or modified)")
        else:
            present.append(entry)
    if next_id != manifest.num_rows:
        bad.append(f"{MANIFEST}: shards hold {next_id} rows, manifest says {manifest.num_rows}")
    listed = {e.file for e in manifest.shards}
    for name in sorted(set(shard_sizes) - listed):
        bad.append(f"{name}: stray file not in the manifest")
    unsized = sum(entry.bytes is None for entry in manifest.shards)
    if deep or unsized:  # a manifest from before sizes were recorded can only be checked by reading
        entries = present if deep else [e for e in present if e.bytes is None]
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            bad += [line for line in pool.map(lambda e: shard_problem(out, manifest, e), entries) if line]
    checked = "checksums, tags, ids and seeds match" if deep else "every shard present with its recorded size"
    summary = (f"OK {out}: {len(manifest.shards)} shards, {manifest.num_rows:,} rows, ids 0..{manifest.num_rows - 1}, "
               f"{checked}\n   made by: {manifest.identity().describe()}")
    return bad, summary


def shard_problem(out: str, manifest: Manifest, entry: ShardEntry) -> str | None:
    """What is wrong with one shard's bytes, or None."""
    data = storage.read_bytes(storage.join(out, entry.file))
    if sha256(data) != entry.sha256:
        return f"{entry.file}: sha256 mismatch (corrupt or modified)"
    try:
        table = pq.read_table(io.BytesIO(data), columns=["id", "seed"])
        schema = pq.read_schema(io.BytesIO(data))
        tag = json.loads((schema.metadata or {}).get(SHARD_TAG, b"null"))
    except (pa.ArrowInvalid, KeyError, OSError, ValueError) as e:
        return f"{entry.file}: unreadable ({e})"
    ids = table.column("id").to_numpy()
    if tag != {"dataset": manifest.identity().digest(), "shard": entry.first_id // manifest.rows_per_shard}:
        return f"{entry.file}: its raygen tag says {tag}, not this dataset's shard"
    if schema_description(schema)["fields"] != manifest.schema_.get("fields"):
        return f"{entry.file}: its schema differs from the manifest's"
    if len(ids) != entry.rows:
        return f"{entry.file}: {len(ids)} rows, manifest says {entry.rows}"
    if not np.array_equal(ids, np.arange(entry.first_id, entry.first_id + entry.rows)):
        return f"{entry.file}: ids are not contiguous from {entry.first_id}"
    if not np.array_equal(table.column("seed").to_numpy(), row_seeds(manifest.seed, ids)):
        return f"{entry.file}: seeds do not follow from the base seed {manifest.seed} and the ids"
    return None


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        p = ArgumentParser(prog="raygen verify", description="Check a dataset against its manifest.")
        p.add_argument("uri", help="dataset folder: path or s3:// URI")
        p.add_argument("--deep", action="store_true",
                       help="also read every shard: checksum, tag, schema, ids and seeds (default: sizes from a listing)")
        ns = p.parse_args(argv)
        if not storage.exists(ns.uri):
            raise UserError(f"{ns.uri} does not exist")
        bad, summary = problems(ns.uri, deep=ns.deep)
        if bad:
            for line in bad:
                print(f"BAD {line}")
            print(f"FAILED {ns.uri}: {len(bad)} problem(s)")
            return 1
        print(summary)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
