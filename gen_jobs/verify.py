"""Check a dataset against its manifest.

    raygen verify URI
    python -m gen_jobs.verify URI

Every shard the manifest lists must be present, match its sha256, carry the
dataset's tag, have the manifest's schema, and hold its row count of
contiguous ids from its first id, each with the seed its id and the base seed
give. Shard-named files the manifest does not list are flagged as strays.
Exit 0 with a summary and the dataset identity it checked (family, checkpoint
digest, seed, row source, noise version, device kind, torch version), or exit
1 naming each bad file.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gen_jobs import storage
from gen_jobs.cli_args import ArgumentParser, run_main
from gen_jobs.errors import UserError
from gen_jobs.manifest import MANIFEST, SHARD_TAG, read_manifest, schema_description, sha256, shard_files
from gen_jobs.row_seed import row_seeds


def problems(out: str) -> tuple[list[str], str]:
    """(one line per bad file, summary line). Raises UserError when there is no manifest."""
    manifest = read_manifest(out)
    if manifest is None:
        hint = " (an unfinished run: complete it with raygen generate ... --resume)" if shard_files(out) else ""
        raise UserError(f"no {MANIFEST} in {out}: not a raygen dataset, or not finished{hint}")
    present = shard_files(out)
    listed = {e.file for e in manifest.shards}
    digest = manifest.identity().digest()
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
            table = pq.read_table(io.BytesIO(data), columns=["id", "seed"])
            schema = pq.read_schema(io.BytesIO(data))
            tag = json.loads((schema.metadata or {}).get(SHARD_TAG, b"null"))
        except (pa.ArrowInvalid, KeyError, OSError, ValueError) as e:
            bad.append(f"{entry.file}: unreadable ({e})")
            continue
        ids = table.column("id").to_numpy()
        if tag != {"dataset": digest, "shard": entry.first_id // manifest.rows_per_shard}:
            bad.append(f"{entry.file}: its raygen tag says {tag}, not this dataset's shard")
        elif schema_description(schema)["fields"] != manifest.schema_.get("fields"):
            bad.append(f"{entry.file}: its schema differs from the manifest's")
        elif len(ids) != entry.rows:
            bad.append(f"{entry.file}: {len(ids)} rows, manifest says {entry.rows}")
        elif not np.array_equal(ids, np.arange(entry.first_id, entry.first_id + entry.rows)):
            bad.append(f"{entry.file}: ids are not contiguous from {entry.first_id}")
        elif not np.array_equal(table.column("seed").to_numpy(), row_seeds(manifest.seed, ids)):
            bad.append(f"{entry.file}: seeds do not follow from the base seed {manifest.seed} and the ids")
    if next_id != manifest.num_rows:
        bad.append(f"{MANIFEST}: shards hold {next_id} rows, manifest says {manifest.num_rows}")
    for name in sorted(set(present) - listed):
        bad.append(f"{name}: stray file not in the manifest")
    summary = (f"OK {out}: {len(manifest.shards)} shards, {manifest.num_rows:,} rows, ids 0..{manifest.num_rows - 1}, "
               f"checksums match\n   made by: {manifest.identity().describe()}")
    return bad, summary


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        p = ArgumentParser(prog="raygen verify", description="Check a dataset against its manifest.")
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
