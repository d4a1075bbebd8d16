"""A generation run's record, kept by the driver: which shards to write, which are written, and the manifest.

    used by gen_jobs.generate

    shards_to_write   one listing decides which shards a run (or a --resume) writes
    ProgressRecord    every 30 s, the shards written since the last record (many-shard runs)
    gate_counts       --filter's counts over the dataset's shards
    write_manifest    record the dataset with its figures: the manifest goes last
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from gen_jobs.core import storage
from gen_jobs.core.lease import Lease
from gen_jobs.data.gate import counts
from gen_jobs.data.manifest import (
    INLINE_SHARDS,
    PENDING,
    PROGRESS,
    SHARD_LIST,
    DatasetIdentity,
    Manifest,
    ShardEntry,
    progress_name,
    schema_description,
    shard_list_bytes,
)
from gen_jobs.data.shard_reads import read_reports


def shards_to_write(identity: DatasetIdentity, out: str, recorded: list[ShardEntry],
                    sizes: dict[str, int]) -> tuple[list[int], dict[int, ShardEntry]]:
    """(shards to (re)generate, entries of the shards already good).

    `recorded`: the shards this dataset's manifest lists, or else those its unfinished run
    recorded as written (manifest.recorded_progress). `sizes`: {name: bytes} of raygen's
    shard files present in `out`, from the folder's one listing. A recorded shard with its
    size is checked against the listing alone: raygen writes every file atomically, so a
    file of the recorded size under the recorded name is the file it wrote (a same-size
    change of its bytes is what `raygen verify --deep` finds). Other present shards (written
    after a run's last record, or recorded before sizes were) are read (on the Ray cluster
    when there is one: gen_jobs.data.shard_reads) and kept only if they prove they belong to this dataset.
    """
    expected = {e.file: e for e in recorded}
    todo, good, to_read = [], {}, []
    for k in range(identity.num_shards):
        name = identity.shard_name(k)
        entry = expected.get(name)
        if name not in sizes:
            todo.append(k)
        elif entry is not None and entry.bytes is not None:
            if sizes.get(name) == entry.bytes:
                good[k] = entry
            else:
                todo.append(k)
        else:
            to_read.append(k)

    for k, report in read_reports(out, identity, to_read).items():
        entry = expected.get(identity.shard_name(k))
        if entry is not None and entry.sha256 == report.sha256:  # recorded before sizes were
            good[k] = entry.model_copy(update={"bytes": report.bytes})
        elif entry is None and report.problem is None:  # no record: the shard proved it is this dataset's
            ids = identity.shard_ids(k)
            good[k] = ShardEntry(file=identity.shard_name(k), first_id=ids.start, rows=len(ids), sha256=report.sha256,
                                 bytes=report.bytes)
        else:
            todo.append(k)
    return sorted(todo), good


def gate_counts(out: str, entries: list[ShardEntry], known: dict[str, dict[str, int]] | None = None) -> dict[str, int]:
    """Rows requested, accepted at the first try, accepted later and rejected, over `entries`.

    `known`: {shard file: its counts} of the shards this run wrote (their writers counted them);
    only the others (written by an earlier run, before a --resume) are read, two columns each.
    """
    known = known or {}
    totals: Counter[str] = Counter()
    attempts, status = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=object)]
    for entry in entries:
        if entry.file in known:
            totals.update(known[entry.file])
            continue
        fs, path = storage.resolve(storage.join(out, entry.file))
        table = pq.read_table(path, filesystem=fs, columns=["attempts", "status"])
        attempts.append(table.column("attempts").to_numpy())
        status.append(np.asarray(table.column("status").to_pylist(), dtype=object))
    totals.update(counts(np.concatenate(attempts), np.concatenate(status)))  # (every key, zeros too)
    return dict(totals)


def write_manifest(out: str, identity: DatasetIdentity, entries: list[ShardEntry], quality: dict | None,
                   lease: Lease | None = None, command: list[str] | None = None,
                   known_gate: dict[str, dict[str, int]] | None = None) -> Manifest:
    """Record the dataset with its quality figures (gen_jobs.quality.scoring.score): the manifest goes last,
    then the pending marker goes.

    Under a lease, the lease is checked first: a run that lost it writes no manifest.
    `known_gate`: the gate counts of the shards this run wrote, by file (see gate_counts).
    """
    fs, path = storage.resolve(storage.join(out, entries[0].file))
    schema = pq.read_schema(path, filesystem=fs)
    manifest = Manifest(
        **identity.model_dump(), shards=entries, schema_=schema_description(schema), quality=quality,
        gate_counts=gate_counts(out, entries, known_gate) if identity.gate else None, command=command,
    )
    if lease is not None:
        lease.assert_held()
    for name, data in manifest.files().items():  # a shard list first (many shards), the manifest last
        storage.write_bytes_atomic(storage.join(out, name), data)
    storage.delete_file(storage.join(out, PENDING))
    return manifest


class ProgressRecord:
    """Every RECORD_SECONDS, the shards written since the last record, as a new piece (many-shard datasets only).

    A run that stops leaves the record behind, and --resume trusts a recorded shard whose file
    has its recorded size without reading it: resuming a million-shard run reads only the shards
    written after its last record, not the terabytes before. The record is append-only (a piece
    `_progress-NNNNNN.parquet` holds the new entries alone), so a run writes each entry about
    once; every COMPACT_EVERY pieces they are folded into SHARD_LIST, so a resume reads a bounded
    number of files. The pieces go once the manifest is written (`clear`).
    """

    RECORD_SECONDS = 30.0
    COMPACT_EVERY = 64

    def __init__(self, out: str, identity: DatasetIdentity, lease: Lease, pieces: list[str]):
        self.out = out
        self.digest = identity.digest()
        self.lease = lease
        self.enabled = identity.num_shards > INLINE_SHARDS
        self.last = time.monotonic()
        self.pieces = list(pieces)  # in the folder: an earlier run's, then this run's
        self.next = 1 + max((int(PROGRESS.match(name).group(1)) for name in pieces), default=-1)
        self.recorded: set[str] = set()  # shard files this run's record holds

    def update(self, good: dict[int, ShardEntry]) -> None:
        if not self.enabled or time.monotonic() - self.last < self.RECORD_SECONDS:
            return
        self.lease.assert_held()  # a run that lost --out writes nothing more there
        if len(self.pieces) >= self.COMPACT_EVERY:  # the whole record in one file, then the pieces go
            storage.write_bytes_atomic(storage.join(self.out, SHARD_LIST),
                                       shard_list_bytes(self.digest, [good[k] for k in sorted(good)]))
            self.clear()
            self.recorded = {entry.file for entry in good.values()}
        else:
            new = [good[k] for k in sorted(good) if good[k].file not in self.recorded]
            if new:
                name = progress_name(self.next)
                storage.write_bytes_atomic(storage.join(self.out, name), shard_list_bytes(self.digest, new))
                self.next += 1
                self.pieces.append(name)
                self.recorded.update(entry.file for entry in new)
        self.last = time.monotonic()

    def clear(self) -> None:
        """Remove the record's pieces (the manifest, or SHARD_LIST, holds what they said)."""
        remove_progress(self.out, self.pieces)
        self.pieces = []


def remove_progress(out: str, pieces: list[str]) -> None:
    """Delete progress pieces (`_progress-NNNNNN.parquet`) whose entries a manifest or SHARD_LIST now holds."""
    for name in pieces:
        storage.delete_file(storage.join(out, name))
