"""The dataset manifest (`_manifest.json`) and shard bookkeeping.

A dataset folder (local or s3://) holds:

    part-00000.parquet ...  shard k: rows k*R .. (k+1)*R-1, in id order; with
                            --spread-keys under one of 256 folders, 00/ .. ff/
                            (k mod 256): 00/part-00000.parquet, 01/part-00001.parquet
    _manifest.json          written last: what made the data, and every shard's
                            file, first id, row count, sha256 and size
    _shards.parquet         with more than INLINE_SHARDS shards: the shard list, one row
                            a shard, which the manifest then names with its sha256 instead
                            of listing the shards itself
    _progress-NNNNNN.parquet  only while such a run is under way: every half minute, the
                            shards written since the last piece (append-only: a million-shard
                            run writes each entry about once), so that --resume reads none of
                            them; every 64th time they are folded into _shards.parquet
    _pending.json           only while a run is unfinished: what is being made,
                            so that --resume can check it continues the same dataset
    _lease.json             only while a run is live: who is writing (gen_jobs.core.lease)

Every shard also carries, in its Parquet footer's key-value metadata, a
`raygen` tag: {"dataset": the identity's digest, "shard": k}. It proves the
file is raygen's (so --overwrite may delete it) and which dataset it belongs
to (so --resume may keep it without a manifest).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel, Field

from gen_jobs import __version__
from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.row_seed import NOISE_VERSION
from gen_jobs.data.gate import QualityGate
from gen_jobs.data.rows import RowSource

MANIFEST = "_manifest.json"
PROGRESS = re.compile(r"^_progress-(\d{6,})\.parquet$")  # a piece of an unfinished run's record (ProgressRecord)


def progress_name(seq: int) -> str:
    return f"_progress-{seq:06d}.parquet"
SHARD_LIST = "_shards.parquet"
# A manifest lists up to this many shards itself (~150 bytes a shard in JSON); beyond, SHARD_LIST does:
# ~40 bytes a shard, read column by column (1M shards: ~40 MB, not a 150 MB JSON document).
INLINE_SHARDS = 1000
PENDING = "_pending.json"
LEASE = "_lease.json"
SHARD_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")
SHARD_TAG = b"raygen"
# --spread-keys: shard k lies under folder k mod 256 (two hex digits), so that consecutive shards,
# written and read together, fall under different S3 prefixes (each prefix has its own request rate).
SPREAD_FOLDERS = 256
SPREAD_FOLDER = re.compile(r"^[0-9a-f]{2}$")
SHARD_PATH = re.compile(r"^(?:[0-9a-f]{2}/)?part-(\d{5,})\.parquet$")  # a shard's path in either layout


def shard_name(k: int, key_layout: str = "flat") -> str:
    """Shard k's path inside the dataset folder: `part-k.parquet`, or under its folder when spread."""
    name = f"part-{k:05d}.parquet"
    return name if key_layout == "flat" else f"{k % SPREAD_FOLDERS:02x}/{name}"


def dataset_files(out: str) -> dict[str, int | None]:
    """{path inside `out`: size (None: a symbolic link)} of the files directly in it and in its
    two-hex-digit folders (the spread layout's), from one listing (S3) or one per folder (local)."""
    if storage.is_s3(out):
        files = storage.list_relative(out, recursive=True)
    else:
        files = storage.list_relative(out)
        for folder in storage.list_folders(out):
            if SPREAD_FOLDER.match(folder):
                files.update({f"{folder}/{name}": size for name, size in storage.list_relative(storage.join(out, folder)).items()})
    return {path: size for path, size in files.items()
            if "/" not in path or (path.count("/") == 1 and SPREAD_FOLDER.match(path.split("/")[0]))}


class DatasetIdentity(BaseModel):
    """What makes a dataset's bytes: equal identities give byte-identical shards.

    Besides the inputs (checkpoint weights, recipe, seed, row source) it records
    how rows were computed: the noise scheme, the device kind and the torch
    version, since a different kernel can change a pixel or a token. `--resume`
    refuses to mix any of them.
    """

    family: str
    recipe: dict
    checkpoint: str
    checkpoint_sha256: str
    seed: int
    num_rows: int
    rows_per_shard: int
    labels: list[int] | None = None
    source: RowSource = RowSource()
    gate: QualityGate | None = None  # raygen generate --filter / --max-attempts
    noise_version: str = NOISE_VERSION
    device_kind: Literal["cpu", "cuda"] = "cpu"
    torch_version: str
    key_layout: Literal["flat", "spread"] = "flat"  # where shards lie (raygen generate --spread-keys), not their bytes

    def differences(self, other: "DatasetIdentity") -> list[str]:
        """What differs between the two, in words (the checkpoint's and input's locations do not count)."""
        out = []
        for f in ("family", "recipe", "checkpoint_sha256", "seed", "num_rows", "rows_per_shard", "labels"):
            if getattr(self, f) != getattr(other, f):
                out.append(f)
        out += self.source.differences(other.source)
        if self.gate != other.gate:
            made = other.gate.describe() if other.gate else "none"
            out.append(f"filter (made with {made}, now {self.gate.describe() if self.gate else 'none'})")
        if self.noise_version != other.noise_version:
            out.append(f"noise version (made with {other.noise_version}, now {self.noise_version})")
        if self.device_kind != other.device_kind:
            out.append(f"device (made on {other.device_kind}, resuming on {self.device_kind})")
        if self.torch_version != other.torch_version:
            out.append(f"torch version (made with {other.torch_version}, now {self.torch_version})")
        if self.key_layout != other.key_layout:
            out.append(f"key layout (made {other.key_layout}, now {self.key_layout}: "
                       f"{'give' if other.key_layout == 'spread' else 'leave out'} --spread-keys)")
        return out

    def digest(self) -> str:
        """sha256 of what makes the bytes (locations left out: moving a checkpoint or input changes nothing)."""
        data = self.model_dump(mode="json", exclude={"checkpoint", "key_layout"})  # (where shards lie: not bytes)
        data["source"].pop("uri", None)
        if data["gate"] is None:  # datasets without a filter keep the digests they always had
            del data["gate"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def shard_tag(self, k: int) -> dict[bytes, bytes]:
        """The footer metadata of shard k: whose it is."""
        return {SHARD_TAG: json.dumps({"dataset": self.digest(), "shard": k}, sort_keys=True).encode()}

    def describe(self) -> str:
        """One line for people: how the rows were made."""
        return (f"{self.family}, checkpoint sha256 {self.checkpoint_sha256[:12]}, seed {self.seed}, rows from {self.source.kind}, "
                f"noise {self.noise_version}, made on {self.device_kind} with torch {self.torch_version}")

    def shard_name(self, k: int) -> str:
        """Shard k's path inside the dataset folder, in this dataset's key layout."""
        return shard_name(k, self.key_layout)

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.rows_per_shard)

    def shard_ids(self, k: int) -> range:
        start = k * self.rows_per_shard
        return range(start, min(start + self.rows_per_shard, self.num_rows))


class ShardEntry(BaseModel):
    file: str = Field(pattern=SHARD_PATH.pattern)  # a name read from a file is never a path out of the dataset
    first_id: int
    rows: int
    sha256: str
    bytes: int | None = None  # the file's size: --resume and verify check it from a listing, reading nothing


class Manifest(DatasetIdentity):
    shards: list[ShardEntry]
    schema_: dict
    quality: dict | None = None
    gate_counts: dict | None = None  # with --filter: requested, accepted_first_try, accepted_later, rejected
    command: list[str] | None = None  # `raygen generate` arguments that shape the rows (--out left out): provenance
    raygen_version: str = __version__

    model_config = {"populate_by_name": True}

    def to_json(self, shard_list: dict | None = None) -> bytes:
        """The manifest document; with `shard_list` ({file, sha256, shards}) it names that file instead of
        listing the shards."""
        data = self.model_dump(mode="json", exclude={"shards"} if shard_list else None)
        if shard_list:
            data["shard_list"] = shard_list
        data["schema"] = data.pop("schema_")
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | dict, shards: list["ShardEntry"] | None = None) -> "Manifest":
        """The manifest a document (JSON, or already parsed) describes; `shards`: its shard list, when the
        document names a file for it."""
        data = dict(json.loads(raw) if isinstance(raw, (bytes, str)) else raw)
        data["schema_"] = data.pop("schema", {})
        if shards is None:
            return cls.model_validate(data)
        data.pop("shard_list")
        manifest = cls.model_validate({**data, "shards": []})
        manifest.shards = shards  # read from raygen's own checksummed file: not validated a million times over
        return manifest

    def files(self) -> dict[str, bytes]:
        """{name: bytes} that record this manifest, in the order they must be written (the manifest last)."""
        if len(self.shards) <= INLINE_SHARDS:
            return {MANIFEST: self.to_json()}
        listing = shard_list_bytes(self.identity().digest(), self.shards)
        return {SHARD_LIST: listing,
                MANIFEST: self.to_json({"file": SHARD_LIST, "sha256": sha256(listing), "shards": len(self.shards)})}

    def identity(self) -> DatasetIdentity:
        return DatasetIdentity.model_validate(self.model_dump(include=set(DatasetIdentity.model_fields)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DamagedStateFile(UserError):
    """A manifest or pending record that cannot be read; `recorded` holds the shard checksums it still names."""

    def __init__(self, message: str, recorded: dict[str, str]):
        super().__init__(message)
        self.recorded = recorded


def _damaged(uri: str, raw: bytes, error: Exception, what: str) -> DamagedStateFile:
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and "family" in data and "noise_version" not in data:
        why = "it was made by an earlier raygen, whose rows used other noise, so it cannot be continued"
    else:
        why = f"it is damaged ({str(error).splitlines()[0][:200]})"
    recorded = {}
    if isinstance(data, dict) and isinstance(data.get("shards"), list):  # what it still says of its shards
        recorded = {e["file"]: e["sha256"] for e in data["shards"]
                    if isinstance(e, dict) and isinstance(e.get("file"), str) and SHARD_PATH.match(e["file"])
                    and isinstance(e.get("sha256"), str)}
    return DamagedStateFile(f"{uri} is not a valid raygen {what}: {why}", recorded)


def read_manifest(out: str) -> Manifest | None:
    """The dataset's manifest, None if there is none; DamagedStateFile (a UserError) if it cannot be read."""
    def parse(raw: bytes) -> Manifest:
        data = json.loads(raw)
        named = data.get("shard_list")
        return Manifest.from_json(data, _listed_shards(out, named) if named is not None else None)

    return _parse_state_file(storage.join(out, MANIFEST), "manifest", parse)


# Past INLINE_SHARDS a manifest is a small header: 1,000 inline shard entries are ~200 KB.
STATE_FILE_LIMIT = 16 * 2**20
SHARD_LIST_LIMIT = 1 * 2**30  # ~40 bytes a shard: room for 25M shards


def _read_state_file(uri: str, what: str, limit: int = STATE_FILE_LIMIT) -> bytes | None:
    """A state file's bytes (None: none there), bounded and never through a link; anything else is damage."""
    try:
        return storage.read_small_file(uri, limit, what)
    except UserError as e:
        raise DamagedStateFile(str(e), {}) from e


def _parse_state_file(uri: str, what: str, parse):
    """`parse(bytes)` of the state file at `uri`; None if there is none. A file that cannot be read or parsed
    (not JSON, a JSON list, the wrong shape) is a DamagedStateFile (a UserError) naming it as `what`."""
    raw = _read_state_file(uri, what)
    if raw is None:
        return None
    try:
        return parse(raw)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _damaged(uri, raw, e, what) from e


def _listed_shards(out: str, named: dict) -> list[ShardEntry]:
    """The shards of the list file a manifest names; ValueError if it is not the file the manifest recorded."""
    if named.get("file") != SHARD_LIST:
        raise ValueError(f"its shard list is {named.get('file')!r}, not {SHARD_LIST}")
    uri = storage.join(out, SHARD_LIST)
    raw = _read_state_file(uri, "shard list", SHARD_LIST_LIMIT)
    if raw is None:
        raise ValueError(f"its shard list {SHARD_LIST} is missing")
    if sha256(raw) != named.get("sha256"):
        raise ValueError(f"its shard list {SHARD_LIST} does not match the sha256 it records (replaced or damaged)")
    return read_shard_list(raw)[1]


def shard_list_bytes(digest: str, entries: list[ShardEntry]) -> bytes:
    """The shard list file: one row per shard, tagged with the dataset's digest."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "file": pa.array([e.file for e in entries], pa.string()),
        "first_id": pa.array([e.first_id for e in entries], pa.int64()),
        "rows": pa.array([e.rows for e in entries], pa.int64()),
        "sha256": pa.array([e.sha256 for e in entries], pa.string()),
        "bytes": pa.array([e.bytes for e in entries], pa.int64()),
    }).replace_schema_metadata({SHARD_TAG: json.dumps({"dataset": digest}).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_shard_list(raw: bytes) -> tuple[str, list[ShardEntry]]:
    """(the dataset digest it is tagged with, its entries); ValueError if it is not a raygen shard list."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))
        digest = json.loads((table.schema.metadata or {})[SHARD_TAG])["dataset"]
        columns = [table.column(name).to_pylist() for name in ("file", "first_id", "rows", "sha256", "bytes")]
    except (pa.ArrowException, OSError, KeyError, TypeError) as e:
        raise ValueError(f"not a raygen shard list ({str(e).splitlines()[0][:200]})") from e
    strange = next((f for f in columns[0] if not isinstance(f, str) or not SHARD_PATH.match(f)), None)
    if strange is not None or len(columns[0]) != len(set(columns[0])):
        raise ValueError(f"not a raygen shard list (it names {strange!r}, which is not a shard's name)" if strange
                         is not None else "not a raygen shard list (it names a shard twice)")
    # model_construct: the names are checked above; the rest is raygen's own checksummed file, not validated
    # a million times over
    return digest, [ShardEntry.model_construct(file=f, first_id=i, rows=r, sha256=h, bytes=b)
                    for f, i, r, h, b in zip(*columns)]


def recorded_progress(out: str, identity: DatasetIdentity, pieces: list[str] = ()) -> list[ShardEntry]:
    """The shards an unfinished run of this dataset recorded as written, [] if none: its SHARD_LIST and the
    progress `pieces` (names matching PROGRESS) after it.

    A record of another dataset, or one that cannot be read, records nothing: its shards are then
    read and checked like any other.
    """
    entries: dict[str, ShardEntry] = {}
    for name in [SHARD_LIST, *sorted(pieces)]:
        try:
            raw = storage.read_small_file(storage.join(out, name), SHARD_LIST_LIMIT, "shard record")
            if raw is None:
                continue
            digest, listed = read_shard_list(raw)
        except (ValueError, UserError):
            continue
        if digest == identity.digest():
            entries.update((e.file, e) for e in listed)
    return sorted(entries.values(), key=lambda e: e.first_id)


def read_pending(out: str) -> DatasetIdentity | None:
    """What an unfinished run is making, None if no run is; DamagedStateFile if it cannot be read."""
    return _parse_state_file(storage.join(out, PENDING), "pending record", DatasetIdentity.model_validate_json)


def decode_tag(metadata: dict | None) -> dict | None:
    """The `raygen` tag of Parquet key-value metadata (a footer's, a schema's); None if it has none."""
    try:
        tag = json.loads((metadata or {})[SHARD_TAG])
    except (KeyError, ValueError):
        return None
    return tag if isinstance(tag, dict) else None


def shard_tag(uri: str) -> dict | None:
    """The `raygen` tag in a shard's Parquet footer; None if it has none, is not Parquet, or is a link."""
    import pyarrow.parquet as pq

    if storage.is_link(uri):
        return None
    fs, path = storage.resolve(uri)
    try:
        return decode_tag(pq.read_metadata(path, filesystem=fs).metadata)
    except (OSError, ValueError):
        return None


def read_shards(out: str, entries: list[ShardEntry], columns: list[str] | None = None,
                max_rows: int | None = None):
    """The listed shards as one Arrow table, in id order; the first `max_rows` rows when given (reading only
    the row groups that hold them: a card's preview of 10 rows does not read a 1 GB shard).

    A requested column a shard lacks is an error naming it (pyarrow would quietly leave it out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, rows = [], 0
    for entry in entries:
        if max_rows is not None and rows >= max_rows:
            break
        fs, path = storage.resolve(storage.join(out, entry.file))
        parquet = pq.ParquetFile(path, filesystem=fs)
        missing = [c for c in columns or () if c not in parquet.schema_arrow.names]
        if missing:
            raise UserError(f"shard {storage.join(out, entry.file)} has no column {', '.join(missing)} "
                            f"(its columns: {', '.join(parquet.schema_arrow.names)}): it was not written by the "
                            "family this reader expects; regenerate the dataset or read the columns it has")
        if max_rows is None:
            tables.append(parquet.read(columns=columns))
        else:
            batch = next(parquet.iter_batches(batch_size=max_rows - rows, columns=columns), None)
            tables.append(parquet.schema_arrow.empty_table().select(columns or parquet.schema_arrow.names)
                          if batch is None else pa.Table.from_batches([batch]))
        rows += tables[-1].num_rows
    table = pa.concat_tables(tables)
    return table if max_rows is None else table.slice(0, max_rows)


def schema_description(schema) -> dict:
    """A pyarrow schema as JSON: field names and types, plus its HuggingFace features."""
    meta = schema.metadata or {}
    features = json.loads(meta[b"huggingface"])["info"]["features"] if b"huggingface" in meta else None
    return {"fields": [{"name": f.name, "type": str(f.type)} for f in schema], "huggingface_features": features}
