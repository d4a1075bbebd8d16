"""Check a dataset against its manifest.

    raygen verify URI
    python -m gen_jobs.verify URI

It prints the dataset identity it checked (family, checkpoint digest, seed,
row source, noise version, device kind, torch version). Every shard the manifest lists must be present, match its sha256 and row count,
and hold contiguous ids from its first id; `part-*` files the manifest does not
list are flagged as strays. Exit 0 with a one-line summary, or exit 1 naming
each bad file.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gen_jobs import storage
from gen_jobs.cli_args import run_main
from gen_jobs.errors import UserError
from gen_jobs.manifest import MANIFEST, read_manifest, sha256, shard_files


def problems(out: str) -> tuple[list[str], str]:
    """(one line per bad file, summary line). Raises UserError when there is no manifest."""
    manifest = read_manifest(out)
    if manifest is None:
        hint = " (an unfinished run: complete it with raygen generate ... --resume)" if shard_files(out) else ""
        raise UserError(f"no {MANIFEST} in {out}: not a raygen dataset, or not finished{hint}")
    present = shard_files(out)
    listed = {e.file for e in manifest.shards}
    bad = []
    next_id = 0
    for entry in manifest.shards:
        if entry.first_id != next_id:
            bad.append(f"{entry.file}: manifest says first id {entry.first_id}, expected {next_id}")
        next_id = entry.first_id + entry.rows
        if entry.file not in present:
            bad.append(f"{entry.file}: missing")
            continue
        data = storage.read_bytes(present[entry.file])
        if sha256(data) != entry.sha256:
            bad.append(f"{entry.file}: sha256 mismatch (corrupt or modified)")
            continue
        try:
            ids = pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_numpy()
        except (pa.ArrowInvalid, KeyError, OSError) as e:
            bad.append(f"{entry.file}: unreadable ({e})")
            continue
        if len(ids) != entry.rows:
            bad.append(f"{entry.file}: {len(ids)} rows, manifest says {entry.rows}")
        elif not np.array_equal(ids, np.arange(entry.first_id, entry.first_id + entry.rows)):
            bad.append(f"{entry.file}: ids are not contiguous from {entry.first_id}")
    if next_id != manifest.num_rows:
        bad.append(f"{MANIFEST}: shards hold {next_id} rows, manifest says {manifest.num_rows}")
    for name in sorted(set(present) - listed):
        bad.append(f"{name}: stray file not in the manifest")
    summary = (f"OK {out}: {len(manifest.shards)} shards, {manifest.num_rows:,} rows, ids 0..{manifest.num_rows - 1}, "
               f"checksums match\n   made by: {manifest.identity().describe()}")
    return bad, summary


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        p = argparse.ArgumentParser(prog="raygen verify", description="Check a dataset against its manifest.")
        p.add_argument("uri", help="dataset folder: path or s3:// URI")
        ns = p.parse_args(argv)
        if not storage.exists(ns.uri):
            raise UserError(f"{ns.uri} does not exist")
        bad, summary = problems(ns.uri)
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
