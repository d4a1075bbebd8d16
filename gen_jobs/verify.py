"""Check a dataset against its manifest.

    raygen verify URI [--deep]
    python -m gen_jobs.verify URI [--deep]

From one listing of the folder (time proportional to the number of shards, not
their bytes): every shard the manifest lists must be present with the size it
records, the shards' ids must run contiguously from 0 to the manifest's row
count, and shard-named files the manifest does not list are flagged as strays.
raygen writes every file atomically, so a file of the recorded size under the
recorded name is the one it wrote; a change of its bytes that keeps its size is
what `--deep` finds. With `--deep` every shard is also read (on the Ray cluster when
there is one, gen_jobs.data.shard_reads): it must
match its sha256, carry the dataset's tag, have the manifest's schema, and hold
its row count of contiguous ids from its first id, each with the seed its id and
the base seed give. Exit 0 with a summary and the dataset identity it checked
(family, checkpoint digest, seed, row source, noise version, device kind, torch
version), or exit 1 naming each bad file.
"""

from __future__ import annotations

import sys

from gen_jobs.cli_args import ArgumentParser, run_main
from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.data.manifest import MANIFEST, SHARD_PATH, Manifest, ShardEntry, dataset_files, read_manifest
from gen_jobs.data.shard_reads import ShardReport, read_reports


def problems(out: str, deep: bool = True) -> tuple[list[str], str]:
    """(one line per bad file, summary line). Raises UserError when there is no manifest.

    `deep`: also read every shard (checksum, tag, schema, ids, seeds); else the listing alone.
    """
    manifest = read_manifest(out)
    shard_sizes = {name: size for name, size in dataset_files(out).items() if SHARD_PATH.match(name)}
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
        entries = {int(SHARD_PATH.match(e.file).group(1)): e for e in present if deep or e.bytes is None}
        reports = read_reports(out, manifest.identity(), list(entries))
        bad += [line for k, entry in entries.items() if (line := judge(entry, reports[k], manifest))]
    checked = "checksums, tags, ids and seeds match" if deep else "every shard present with its recorded size"
    shards = f"{len(manifest.shards)} shard{'' if len(manifest.shards) == 1 else 's'}"
    summary = (f"OK {out}: {shards}, {manifest.num_rows:,} rows, ids 0..{manifest.num_rows - 1}, "
               f"{checked}\n   made by: {manifest.identity().describe()}")
    return bad, summary


def judge(entry: ShardEntry, report: ShardReport, manifest: Manifest) -> str | None:
    """What is wrong with one shard's bytes, as read, or None."""
    if report.sha256 != entry.sha256:
        return f"{entry.file}: sha256 mismatch (corrupt or modified)"
    if report.problem is not None:
        return f"{entry.file}: {report.problem}"
    if report.fields != manifest.schema_.get("fields"):
        return f"{entry.file}: its schema differs from the manifest's"
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
