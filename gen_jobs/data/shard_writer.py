"""Writing shards on Ray Data actors: the family's Sampler over each shard's rows, streamed to Parquet.

    used by gen_jobs.generate (ShardWriter, in `map_batches`); nothing runs at import

A ShardWriter actor builds the family's Sampler once, from the checkpoint the
driver read once (checkpoint.pin) and put in Ray's object store. For each shard it is given, it makes the
shard's requests (row ids -> seeds, plus the shard's slice of prompts or input
images: `requests`), runs them in the recipe's fixed micro-batches
(`shard_batches`, through the --filter gate), and streams Parquet row groups of
~64 MiB (`row_groups`) to an atomic writer (`write_shard`); it answers with the
shard's manifest entry and its gate counts. An actor that cannot see the run's
lease in a local --out is on a node that does not share the folder, and refuses
(`check_shared_folder`).
"""

from __future__ import annotations

import json
import time
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gen_jobs.core import checkpoint, metrics, registry, storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.family import load_attribute
from gen_jobs.core.lease import LEASE
from gen_jobs.core.row_seed import row_seeds
from gen_jobs.data.gate import ACCEPTED, REJECTED, check_columns, counts, gated
from gen_jobs.data.manifest import (
    DatasetIdentity,
    ShardEntry,
)
from gen_jobs.data.requests import answered_batches
from gen_jobs.data.rows import input_names, read_inputs
from gen_jobs.data.shard_attempts import started_before


class ShardWriter:
    """Ray Data callable class: {shard: k} -> writes part-k, returns its manifest entry.

    `pinned` is the driver's pinned copy of the checkpoint (checkpoint.pin, or an ObjectRef
    of it), whose weights' sha256 is the identity's: the actor writes its files to a local folder
    once, for the sampler to load with the run's recipe, and removes it.
    `run_id` is the run's lease: a worker that cannot see it under a local --out is on a
    node that does not share that folder, and refuses to write there.
    `input_stamps` (ObjectRef or dict, `RowSource.stamps`) are the input files' stamps taken
    when the job was planned: every shard checks the files it read against them.
    `metric_tags` label what the actor adds to the run's metrics (gen_jobs.core.metrics); None: none.
    `answerer` ("module:attribute") names what answers the lines of a requests dataset (gen_jobs.data.requests):
    the generate command names serving.batch_lines.Answerer, so this face imports no serving code.
    `attempts` is the run's ShardAttempts actor (gen_jobs.data.shard_attempts), asked before each shard so
    that a shard started again after its actor died counts as a shard retry; None: not counted.
    """

    def __init__(self, identity: dict, out: str, micro_batch: int, device: str, pinned,
                 run_id: str | None = None, input_stamps=None, metric_tags: dict[str, str] | None = None,
                 attempts=None, answerer: str | None = None):
        import ray

        self.identity = DatasetIdentity.model_validate(identity)
        if run_id is not None:
            check_shared_folder(out, run_id)
        family = registry.get(self.identity.family)
        self.identity.source.file_suffixes = list(family.prompt_files)  # implied by the family, not in the identity
        recipe = family.load("recipe").model_validate(self.identity.recipe)  # with the run's --set overrides
        if isinstance(pinned, ray.ObjectRef):  # one copy in the object store for every actor
            pinned = ray.get(pinned)
        with checkpoint.materialise(pinned) as folder:  # the sampler holds what it loaded; the folder can go
            self.sampler = family.load("sampler")(folder, device, recipe)
        self.to_table = family.load("to_table")
        self.answer = None
        if self.identity.source.kind == "requests":
            if answerer is None:
                raise ValueError("a requests dataset needs `answerer` (gen_jobs.generate.ANSWERER)")
            self.answer = load_attribute(answerer)(self.sampler, family.name, self.identity.source.sha256, micro_batch)
        self.out = out
        self.micro_batch = micro_batch
        if isinstance(input_stamps, ray.ObjectRef):
            input_stamps = ray.get(input_stamps)
        # The input's listing / row groups, read once per actor, and the stamps every shard checks.
        self.input_cache: dict = {} if input_stamps is None else {"stamps": input_stamps}
        self.metric_tags = metric_tags
        self.attempts = attempts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch's manifest entries, each with refused "" - or one row whose `refused` says why not.

        A shard that refuses its input (a UserError: the input changed, a bad primer) is
        answered as a row, not raised: the driver stops the job cleanly, while an exception
        would pass through Ray Data's retries and logs and keep the actor pool alive with it.
        """
        try:
            written = []
            for k in batch["shard"]:
                if started_before(self.attempts, int(k)) and self.metric_tags is not None:
                    metrics.add(metrics.generation().shard_retries, 1, self.metric_tags)
                written.append(write_shard(self.sampler, self.to_table, self.identity, self.out, int(k),
                                           self.micro_batch, self.input_cache, self.answer))
                if self.metric_tags is not None:
                    count_written(written[-1], self.metric_tags)
        except UserError as e:
            # (a placeholder row of the batch's columns, never a manifest entry: the driver stops at `refused`)
            placeholder = ShardEntry.model_construct(file="", first_id=-1, rows=0, sha256="", bytes=0)
            written, refused = [WrittenShard(placeholder, None, 0)], str(e)
        else:
            refused = ""
        columns = {key: np.array([getattr(w.entry, key) for w in written]) for key in ShardEntry.model_fields}
        gate = np.array([json.dumps(w.gate) if w.gate else "" for w in written])  # a gated shard's counts, as JSON
        return {**columns, "gate": gate, "refused": np.array([refused] * len(written))}


def count_written(shard: "WrittenShard", tags: dict[str, str]) -> None:
    """Add a written shard to the run's generation metrics (gen_jobs.core.metrics)."""
    m = metrics.generation()
    metrics.add(m.rows, shard.entry.rows, tags)
    metrics.add(m.shards, 1, tags)
    metrics.add(m.bytes, shard.entry.bytes, tags)
    if shard.gate:
        metrics.add(m.rows_retried, shard.gate["accepted_later"], tags)
        metrics.add(m.rows_rejected, shard.gate["rejected"], tags)
    metrics.add(m.bad_inputs, shard.bad_inputs, tags)


def check_shared_folder(out: str, run_id: str) -> None:
    """A local --out must be the same folder on every node: this node must see the run's lease in it."""
    import socket

    if storage.is_s3(out):
        return
    lease = storage.join(out, LEASE)
    for _ in range(5):  # the driver's heartbeat moves the lease aside for a moment while it renews it
        try:
            seen = json.loads(storage.read_bytes(lease)).get("run_id") if storage.exists(lease) else None
        except (ValueError, UserError):
            seen = None
        if seen == run_id:
            return
        time.sleep(0.2)
    if seen != run_id:
        raise UserError(f"--out {out} is not shared with node {socket.gethostname()}: on a cluster of several "
                        "machines give a folder every node mounts (NFS) or an s3:// URI")


INPUT_COLUMN = {"prompts": "prompt", "images": "input"}  # the sampler's batch column for each row source


def requests(identity: DatasetIdentity, ids: np.ndarray, inputs: np.ndarray | None = None,
             names: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The sampler's input rows: id, its seed, and its label or input (prompt, image) when given.

    `inputs` holds the input rows from ids[0] // K on (K = samples per input):
    row i is sample i % K of input i // K. `names` (images) says where each input
    came from, the same way: it becomes the `source` column.
    """
    batch = {"id": ids, "seed": row_seeds(identity.seed, ids)}
    if identity.labels is not None:
        batch["label"] = np.asarray(identity.labels, dtype=np.int64)[ids % len(identity.labels)]
    k = identity.source.samples_per_input
    if inputs is not None:
        batch[INPUT_COLUMN[identity.source.kind]] = inputs[ids // k - ids[0] // k]
    if names is not None:
        batch["source"] = names[ids // k - ids[0] // k]
    return batch


def shard_batches(sampler, to_table, identity: DatasetIdentity, k: int, micro_batch: int,
                  input_cache: dict | None = None, answer=None) -> Iterator[pa.Table]:
    """Shard k's rows, one micro-batch's table at a time (`answer`: a requests dataset's answerer)."""
    if identity.source.kind == "requests":  # each row a request line, answered through the family's HTTP API
        yield from answered_batches(answer, identity, k, micro_batch, input_cache)
        return
    ids = np.arange(identity.shard_ids(k).start, identity.shard_ids(k).stop, dtype=np.int64)
    per = identity.source.samples_per_input
    inputs = names = None
    first, last = int(ids[0]) // per, int(ids[-1]) // per + 1
    if identity.source.kind != "ids":  # this shard's slice of the input, and nothing more
        inputs = read_inputs(identity.source, first, last, input_cache)
    if identity.source.kind == "images":
        names = input_names(identity.source, first, last, input_cache)
    # Micro-batches start at multiples of `micro_batch` from the shard's first row,
    # whatever the worker count, so batch composition never changes the bytes.
    def sample(batch: dict[str, np.ndarray]) -> pa.Table:
        return to_table(sampler(batch), sampler.recipe)

    for i in range(0, len(ids), micro_batch):
        part = ids[i: i + micro_batch]
        offset = part[0] // per - ids[0] // per
        part_inputs = None if inputs is None else inputs[offset:]
        part_names = None if names is None else names[offset:]
        batch = requests(identity, part, part_inputs, part_names)
        rows = sample(batch)
        if identity.gate is not None:
            if i == 0:  # the filter's columns, checked against the first rows (a UserError stops the job)
                check_columns(identity.gate, rows.schema, identity.family)
            rows = gated(sample, batch, identity.gate, rows)
        yield rows


# A shard's rows are written as row groups of about this many bytes (in memory, before compression):
# a worker holds one row group, not the shard, however large the shard (100k rows of 256x256 images).
ROW_GROUP_BYTES = 64 * 2**20


def row_groups(batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """Micro-batch tables gathered into row groups of about ROW_GROUP_BYTES.

    The cut depends only on the rows (their sizes), never on timing or workers, so a
    shard's bytes stay a pure function of the dataset's identity.
    """
    held, size = [], 0
    for table in batches:
        held.append(table)
        size += table.nbytes
        if size >= ROW_GROUP_BYTES:
            yield pa.concat_tables(held)
            held, size = [], 0
    if held:
        yield pa.concat_tables(held)


class WrittenShard(NamedTuple):
    entry: ShardEntry  # the shard's manifest entry
    gate: dict[str, int] | None  # a gated dataset's counts of the shard's rows (gate.counts)
    bad_inputs: int  # rows whose input the family refused: a status other than "ok" or "rejected"


def write_shard(sampler, to_table, identity: DatasetIdentity, out: str, k: int, micro_batch: int,
                input_cache: dict | None = None, answer=None) -> WrittenShard:
    """Write shard k as it is sampled, row group by row group, atomically (storage.AtomicWriter).

    Returns its manifest entry and what its rows' `status` says (gate counts, bad inputs), from
    the rows as they were written: the driver never reads the shards back to count them.
    """
    tag = identity.shard_tag(k)
    attempts, status = [], []
    with storage.AtomicWriter(storage.join(out, identity.shard_name(k))) as sink:
        writer = None
        for group in row_groups(shard_batches(sampler, to_table, identity, k, micro_batch, input_cache, answer)):
            if writer is None:  # the schema, with HuggingFace's features and raygen's tag, from the first rows
                schema = group.schema.with_metadata({**(group.schema.metadata or {}), **tag})
                writer = pq.ParquetWriter(sink, schema, compression="zstd")
            writer.write_table(group.replace_schema_metadata(schema.metadata), row_group_size=len(group))
            if identity.gate:
                attempts.append(group.column("attempts").to_numpy())
            if "status" in group.column_names:
                status.append(np.asarray(group.column("status").to_pylist(), dtype=object))
        writer.close()
    ids = identity.shard_ids(k)
    entry = ShardEntry(file=identity.shard_name(k), first_id=ids.start, rows=len(ids), sha256=sink.sha256,
                       bytes=sink.size)
    status = np.concatenate(status) if status else np.array([], dtype=object)
    bad_inputs = int(((status != ACCEPTED) & (status != REJECTED)).sum())
    return WrittenShard(entry, counts(np.concatenate(attempts), status) if identity.gate else None, bad_inputs)


# ---------------------------------------------------------------- the dataset
