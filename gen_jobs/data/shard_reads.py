"""Read many shards to check them: spread over the Ray cluster when there is one.

    used by gen_jobs.generate (--resume of shards no record vouches for) and
    gen_jobs.verify (--deep)

Reading is the one part of resume and verify that grows with a dataset's bytes,
so it goes where the bandwidth is: with a Ray cluster at hand (this driver is
connected, or RAY_ADDRESS names one, as under `ray job submit`) the shards are
cut into chunks of CHUNK, each read by a Ray task on whichever node has a free
CPU (S3 is as near to one node as to another; a local --out is shared by every
node, which generate checks); without one they are read here. Either way a
reader keeps READERS_PER_PROCESS reads in flight, since an object store answers
many reads at once and each one mostly waits.

What a read finds is a ShardReport; the callers judge it against what they
expect (a manifest's checksum, the dataset's identity).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gen_jobs.core import storage
from gen_jobs.core.row_seed import row_seeds
from gen_jobs.data.manifest import DatasetIdentity, decode_tag, schema_description, sha256

READERS_PER_PROCESS = 16  # shard reads in flight in one process
CHUNK = 256  # shards per Ray task: big enough to amortise a task's start, small enough to spread


@dataclass(frozen=True)
class ShardReport:
    """What one read of shard k found."""

    k: int
    bytes: int
    sha256: str
    problem: str | None  # why it is not this dataset's shard k (tag, ids, seeds), None if it is
    fields: list[dict] | None  # its schema's fields (schema_description), None if unreadable


def identity_problem(table: pa.Table, identity: DatasetIdentity, k: int, digest: str | None = None) -> str | None:
    """Why a shard's `id` and `seed` columns and tag are not those of `identity`'s shard k, or None.

    `digest`: identity.digest(), when the caller has it (it costs a JSON dump of the recipe).
    """
    tag = decode_tag(table.schema.metadata)
    if tag != {"dataset": digest or identity.digest(), "shard": k}:
        return f"its raygen tag says {tag}, not this dataset's shard"
    expected = identity.shard_ids(k)
    ids = table.column("id").to_numpy()
    if len(ids) != len(expected):
        return f"{len(ids)} rows, expected {len(expected)}"
    if not np.array_equal(ids, np.arange(expected.start, expected.stop)):
        return f"ids are not contiguous from {expected.start}"
    if not np.array_equal(table.column("seed").to_numpy(), row_seeds(identity.seed, ids)):
        return f"seeds do not follow from the base seed {identity.seed} and the ids"
    return None


def read_report(out: str, identity: DatasetIdentity, k: int, digest: str | None = None) -> ShardReport:
    """Read shard k of the dataset at `out` once: its size, checksum, schema and whether it is this dataset's."""
    data = storage.read_bytes(storage.join(out, identity.shard_name(k)))
    try:
        table = pq.read_table(io.BytesIO(data), columns=["id", "seed"])
        fields = schema_description(pq.read_schema(io.BytesIO(data)))["fields"]
        problem = identity_problem(table, identity, k, digest)
    except (pa.ArrowInvalid, KeyError, OSError, ValueError) as e:
        fields, problem = None, f"unreadable ({str(e).splitlines()[0][:200]})"
    return ShardReport(k=k, bytes=len(data), sha256=sha256(data), problem=problem, fields=fields)


def _read_here(out: str, identity: DatasetIdentity, shards: list[int]) -> list[ShardReport]:
    digest = identity.digest()
    with ThreadPoolExecutor(max_workers=READERS_PER_PROCESS) as pool:
        return list(pool.map(lambda k: read_report(out, identity, k, digest), shards))


def _read_chunk(out: str, identity: dict, shards: list[int]) -> list[ShardReport]:
    """A Ray task's share of the reads."""
    return _read_here(out, DatasetIdentity.model_validate(identity), shards)


def cluster_at_hand() -> bool:
    """Whether this process is connected to Ray, or RAY_ADDRESS names a cluster to join."""
    import ray

    return ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))


def read_reports(out: str, identity: DatasetIdentity, shards: list[int]) -> dict[int, ShardReport]:
    """{k: what reading shard k found}, for every k in `shards`; on the Ray cluster when there is one."""
    if len(shards) <= READERS_PER_PROCESS or not cluster_at_hand():
        reports = _read_here(out, identity, shards)
    else:
        import ray

        from gen_jobs.core.cluster import connect

        connect()
        task = ray.remote(num_cpus=1, max_retries=3)(_read_chunk)
        plain = identity.model_dump(mode="json")
        pending = [task.remote(out, plain, shards[i: i + CHUNK]) for i in range(0, len(shards), CHUNK)]
        reports = [report for chunk in ray.get(pending) for report in chunk]
    return {report.k: report for report in reports}
