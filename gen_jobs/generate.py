"""Generate a sharded, verifiable dataset from a checkpoint with Ray Data.

    raygen generate --checkpoint URI --out URI (--num-samples N | --prompts URI
        [--prompt-column COL] [--samples-per-prompt K] | --input URI [--input-column COL]
        [--samples-per-input K]) [--rows-per-shard R] [--seed S]
        [--workers W] [--gpu] [--labels uniform|K[,K...]] [--resume] [--overwrite] [--set k=v ...]
        [--image-column COL] [--styles uniform|K[,K...]]      (style: the same as --input-column, --labels)
        [--audio [--sample-rate HZ] [--soundfont SF2]]       (music: an `audio` WAV column)
        [--wait-for-training SECONDS]    (start before the model finished training: wait for it)
        [--spread-keys]                  (shards under OUT/00/ .. OUT/ff/: S3 request rates per prefix)
    python -m gen_jobs.generate ...        # the same, for `ray job submit`

Pipeline: shard ids -> actor pool of W ShardWriters, each holding the family's
Sampler (row ids -> seeds (+ the shard's slice of prompts or input images,
gen_jobs.data.rows) -> samples in the recipe's fixed micro-batches ->
encoded columns (PNG for images) -> Parquet row groups of ~64 MiB streamed to an
atomic writer, storage.AtomicWriter) -> quality figures -> `_manifest.json`
written last (past 1,000 shards with its shard list, `_shards.parquet`; while
such a run goes on, the driver records the shards written every 30 s in
append-only pieces: ProgressRecord).

Row i is a pure function of (checkpoint, recipe, base seed, i), so any number of
workers, first try or resumed, writes the same bytes. --resume regenerates only
shards that are missing or differ from the size the manifest (or an unfinished
run's shard list) records (one listing; see shards_to_write).

Safety: the run holds --out's lease (gen_jobs.core.lease) from start to end; it
touches only files gen_jobs.data.output_folder proves are raygen's; the driver pins
the checkpoint (read once, digest checked) for every actor; every shard checks
that the input files it read (prompts, images) still carry the size and
modification time they had when the job was planned (gen_jobs.data.rows); an actor
that cannot see the lease in a local --out is on a node that does not share it
and refuses.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from gen_jobs.cli_args import ArgumentParser, run_main, validate_args
from gen_jobs.core import checkpoint, smoke, storage
from gen_jobs.core.console import format_seconds, progress
from gen_jobs.core.errors import UserError
from gen_jobs.core.lease import Lease
from gen_jobs.core.recipes import StrictModel, apply_overrides, recipe_from_dict
from gen_jobs.core.row_seed import row_seeds
from gen_jobs.data import output_folder
from gen_jobs.data.gate import check_columns, counts, gated, parse_filter
from gen_jobs.data.manifest import (
    INLINE_SHARDS,
    PENDING,
    PROGRESS,
    SHARD_LIST,
    DatasetIdentity,
    Manifest,
    ShardEntry,
    progress_name,
    recorded_progress,
    schema_description,
    sha256,
    shard_list_bytes,
)
from gen_jobs.data.rows import RowSource, input_names, plan_images, plan_prompts, read_inputs
from gen_jobs.data.shard_reads import read_reports
from gen_jobs.quality.card import write_card
from gen_jobs.quality.scoring import score


class GenerateArgs(StrictModel):
    checkpoint: storage.Uri
    out: storage.Uri
    num_samples: int | None = Field(None, gt=0)
    prompts: storage.Uri | None = None
    prompt_column: str = "prompt"
    samples_per_prompt: int = Field(1, gt=0)
    input: storage.Uri | None = None
    input_column: str = "image"
    samples_per_input: int = Field(1, gt=0)
    set: list[str] = []
    rows_per_shard: int | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=0)
    workers: int = Field(2, gt=0, le=4096)
    gpu: bool = False
    labels: str = "uniform"
    styles: str | None = None  # style transfer's name for --labels
    audio: bool = False
    sample_rate: int | None = Field(None, ge=8_000, le=96_000)
    soundfont: str | None = None
    resume: bool = False
    overwrite: bool = False
    filter: str | None = None
    max_attempts: int | None = Field(None, ge=1, le=1000)
    card: bool = True  # --no-card: no README.md / quality.json / pictures at the end (gen_jobs.quality.card)
    wait_for_training: float = Field(0, ge=0, le=7 * 24 * 3600)  # seconds to wait for the checkpoint's training to finish
    spread_keys: bool = False  # shards under 256 folders (S3 prefixes) 00/ .. ff/ instead of all in --out

    def shaping_arguments(self) -> list[str]:
        """The `raygen generate` arguments that shape the rows, as a command line's words (the card's provenance).

        Left out: --out (where the bytes go, not what they are) and the flags that change no byte
        (--workers, --gpu, --resume, --overwrite, --no-card, --wait-for-training), so equal datasets
        record equal arguments.
        """
        words = []
        for name, value in self.model_dump(exclude_defaults=True).items():
            if name in ("out", "workers", "gpu", "resume", "overwrite", "card", "wait_for_training"):
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag)
            elif isinstance(value, list):
                for item in value:
                    words += [flag, str(item)]
            else:
                words += [flag, str(value)]
        return words

    @model_validator(mode="after")
    def _attempts_need_a_filter(self) -> "GenerateArgs":
        if self.max_attempts is not None and self.filter is None:
            raise ValueError("--max-attempts sets how often a row may retry --filter: give --filter too")
        return self

    @model_validator(mode="after")
    def _rows_from_one_source(self) -> "GenerateArgs":
        given = [self.num_samples is not None, self.prompts is not None, self.input is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of --num-samples N, --prompts URI or --input URI")
        return self

    @field_validator("labels", "styles")
    @classmethod
    def _labels(cls, v: str | None) -> str | None:
        if v is not None:
            parse_labels(v)
        return v

    @model_validator(mode="after")
    def _styles_or_labels(self) -> "GenerateArgs":
        if self.styles is not None and self.labels != "uniform":
            raise ValueError("give --styles or --labels, not both (they are the same setting)")
        return self

    def label_flag(self) -> tuple[str, str]:
        """(the flag that chose the rows' classes, its value)."""
        return ("--styles", self.styles) if self.styles is not None else ("--labels", self.labels)


def parse_labels(spec: str) -> list[int] | None:
    """'uniform' -> None (drawn from each row's seed); 'K[,K...]' -> labels cycled by row id."""
    if spec == "uniform":
        return None
    try:
        labels = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError("must be 'uniform' or comma-separated class numbers such as 3 or 0,1,2") from None
    if any(k < 0 for k in labels):
        raise ValueError("class numbers must be >= 0")
    return labels


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="raygen generate", description="Generate a sharded Parquet dataset with Ray Data.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (path or s3:// URI) printed by raygen train, or a training run folder (its newest checkpoint)")
    p.add_argument("--out", required=True, help="dataset folder: path or s3:// URI")
    p.add_argument("--num-samples", type=int, help="rows to generate (unconditional)")
    p.add_argument("--prompts", help="Parquet or JSONL file of prompts (path or s3://): one row per prompt and sample")
    p.add_argument("--prompt-column", default="prompt", help="the prompts' text column (default: prompt)")
    p.add_argument("--samples-per-prompt", type=int, default=1, help="samples for each prompt")
    p.add_argument("--input", help="input images: a folder, Parquet file or folder (path or s3://); one row per image and sample")
    p.add_argument("--input-column", "--image-column", dest="input_column", default="image",
                   help="the input Parquet's image column (default: image)")
    p.add_argument("--samples-per-input", type=int, default=1, help="samples for each input image")
    p.add_argument("--rows-per-shard", type=int, help="rows per part file (default: the recipe's)")
    p.add_argument("--seed", type=int, help="base seed (default: the recipe's)")
    p.add_argument("--workers", type=int, default=2, help="sampler actors")
    p.add_argument("--gpu", action="store_true", help="one GPU per sampler actor")
    p.add_argument("--labels", default="uniform", help="'uniform' (drawn per row) or K[,K...] cycled by row id")
    p.add_argument("--styles", help="style transfer: 'uniform' (drawn per row) or style indices K[,K...] cycled by row id")
    p.add_argument("--audio", action="store_true", help="music: add an `audio` column (WAV) rendered from each piece")
    p.add_argument("--sample-rate", type=int, help="music audio: samples per second, 8000-96000 (default: the recipe's, 22050)")
    p.add_argument("--soundfont", help="music audio: a General MIDI .sf2 (default: an installed one, else a NumPy synthesiser)")
    p.add_argument("--filter", metavar="EXPR",
                   help="quality gate on the rows' per-row figures, e.g. 'confidence>=0.8' or 'in_key>=0.9, num_notes>=16': "
                        "a failing row retries with its next candidate (gen_jobs/data/gate.py)")
    p.add_argument("--max-attempts", type=int, help="candidates a row may try under --filter (default 4); "
                                                     "rows that never pass are kept with status 'rejected'")
    p.add_argument("--wait-for-training", type=float, default=0, metavar="SECONDS",
                   help="wait up to SECONDS for --checkpoint to hold a finished training's model (its last epoch), "
                        "so a job can be started before its model is trained (default: 0, no wait)")
    p.add_argument("--spread-keys", action="store_true",
                   help="put shard k under folder k mod 256 (OUT/00/ .. OUT/ff/): on S3 each prefix has its own "
                        "request rate, so a very large cluster writing or reading the shards is not throttled")
    p.add_argument("--resume", action="store_true", help="complete an interrupted or damaged dataset")
    p.add_argument("--overwrite", action="store_true", help="replace whatever dataset is at --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the checkpoint's recipe, e.g. sampling.temperature=0.7")
    p.add_argument("--no-card", dest="card", action="store_false",
                   help="do not write the dataset card (README.md, quality.json, pictures) at the end")
    return p


# ---------------------------------------------------------------- one shard


class ShardWriter:
    """Ray Data callable class: {shard: k} -> writes part-k, returns its manifest entry.

    `checkpoint_files` is the driver's pinned copy of the checkpoint (checkpoint.read_files),
    checked against the identity's digest; without it the checkpoint is read from its URI.
    `run_id` is the run's lease: a worker that cannot see it under a local --out is on a
    node that does not share that folder, and refuses to write there.
    `input_stamps` (ObjectRef or dict, `RowSource.stamps`) are the input files' stamps taken
    when the job was planned: every shard checks the files it read against them.
    """

    def __init__(self, identity: dict, out: str, micro_batch: int, device: str,
                 checkpoint_files=None, run_id: str | None = None, input_stamps=None):
        import tempfile

        import ray

        from gen_jobs.core import registry

        self.identity = DatasetIdentity.model_validate(identity)
        if run_id is not None:
            check_shared_folder(out, run_id)
        family = registry.get(self.identity.family)
        self.identity.source.file_suffixes = list(family.prompt_files)  # implied by the family, not in the identity
        recipe = family.load("recipe").model_validate(self.identity.recipe)  # with the run's --set overrides
        source = self.identity.checkpoint
        if isinstance(checkpoint_files, ray.ObjectRef):  # the driver's pinned copy, in the object store
            checkpoint_files = ray.get(checkpoint_files)
        if checkpoint_files is not None:
            self._pinned = tempfile.TemporaryDirectory(prefix="raygen-ckpt-")  # lives as long as this actor
            source = str(checkpoint.write_files(checkpoint_files, Path(self._pinned.name)))
        # The pinned copy was checked by the driver (pin_checkpoint); a checkpoint read by URI is checked here.
        if checkpoint_files is None and checkpoint.weights_sha256(source) != self.identity.checkpoint_sha256:
            raise UserError(f"the checkpoint {self.identity.checkpoint} changed after this job was planned "
                            "(its weights' sha256 differs); start the job again")
        self.sampler = family.load("sampler")(source, device, recipe)
        self.to_table = family.load("to_table")
        self.out = out
        self.micro_batch = micro_batch
        if isinstance(input_stamps, ray.ObjectRef):
            input_stamps = ray.get(input_stamps)
        # The input's listing / row groups, read once per actor, and the stamps every shard checks.
        self.input_cache: dict = {} if input_stamps is None else {"stamps": input_stamps}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch's manifest entries, each with refused "" - or one row whose `refused` says why not.

        A shard that refuses its input (a UserError: the input changed, a bad primer) is
        answered as a row, not raised: the driver stops the job cleanly, while an exception
        would pass through Ray Data's retries and logs and keep the actor pool alive with it.
        """
        try:
            written = [write_shard(self.sampler, self.to_table, self.identity, self.out, int(k), self.micro_batch,
                                   self.input_cache) for k in batch["shard"]]
        except UserError as e:
            # (a placeholder row of the batch's columns, never a manifest entry: the driver stops at `refused`)
            written, refused = [(ShardEntry.model_construct(file="", first_id=-1, rows=0, sha256="", bytes=0), None)], str(e)
        else:
            refused = ""
        columns = {key: np.array([getattr(e, key) for e, _ in written]) for key in ShardEntry.model_fields}
        gate = np.array([json.dumps(g) if g else "" for _, g in written])  # a gated shard's counts, as JSON
        return {**columns, "gate": gate, "refused": np.array([refused] * len(written))}


def pin_checkpoint(identity: DatasetIdentity) -> dict[str, bytes]:
    """The checkpoint's files, read once by the driver and checked against the identity's digest."""
    from gen_jobs.core.checkpoint import SAMPLER_WEIGHTS

    files = checkpoint.read_files(identity.checkpoint)
    if sha256(files.get(SAMPLER_WEIGHTS, b"")) != identity.checkpoint_sha256:
        raise UserError(f"the checkpoint {identity.checkpoint} changed while this job was planned; start it again")
    return files


def check_shared_folder(out: str, run_id: str) -> None:
    """A local --out must be the same folder on every node: this node must see the run's lease in it."""
    import socket

    from gen_jobs.core.lease import LEASE

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
                  input_cache: dict | None = None) -> Iterator[pa.Table]:
    """Shard k's rows, one micro-batch's table at a time."""
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


def write_shard(sampler, to_table, identity: DatasetIdentity, out: str, k: int, micro_batch: int,
                input_cache: dict | None = None) -> tuple[ShardEntry, dict[str, int] | None]:
    """Write shard k as it is sampled, row group by row group, atomically (storage.AtomicWriter).

    Returns its manifest entry and, for a gated dataset, its gate counts (from the rows as they
    were written: the driver never reads the shards back to count them).
    """
    tag = identity.shard_tag(k)
    attempts, status = [], []
    with storage.AtomicWriter(storage.join(out, identity.shard_name(k))) as sink:
        writer = None
        for group in row_groups(shard_batches(sampler, to_table, identity, k, micro_batch, input_cache)):
            if writer is None:  # the schema, with HuggingFace's features and raygen's tag, from the first rows
                schema = group.schema.with_metadata({**(group.schema.metadata or {}), **tag})
                writer = pq.ParquetWriter(sink, schema, compression="zstd")
            writer.write_table(group.replace_schema_metadata(schema.metadata), row_group_size=len(group))
            if identity.gate:
                attempts.append(group.column("attempts").to_numpy())
                status.append(np.asarray(group.column("status").to_pylist(), dtype=object))
        writer.close()
    ids = identity.shard_ids(k)
    entry = ShardEntry(file=identity.shard_name(k), first_id=ids.start, rows=len(ids), sha256=sink.sha256,
                       bytes=sink.size)
    return entry, counts(np.concatenate(attempts), np.concatenate(status)) if identity.gate else None


# ---------------------------------------------------------------- the dataset


def plan(args: GenerateArgs, log=print) -> tuple[DatasetIdentity, int]:
    import torch

    from gen_jobs.core import registry

    storage.check_lasting(args.out, "--out")
    if args.wait_for_training:
        checkpoint.wait_until_trained(args.checkpoint, args.wait_for_training, log)
    ckpt = checkpoint.latest(args.checkpoint)  # a run folder names its newest checkpoint
    if ckpt != args.checkpoint.rstrip("/"):
        log(f"checkpoint: {ckpt} (the newest in {args.checkpoint})")
    recipe = checkpoint.read_recipe(ckpt)
    if args.set:
        recipe = recipe_from_dict(apply_overrides(recipe.model_dump(mode="json"), args.set))
    recipe = with_audio(recipe, args).for_dataset()
    flag, spec = args.label_flag()
    labels = parse_labels(spec)
    if labels is not None:
        classes = recipe.row_classes()
        if classes is None:
            raise UserError(f"{flag} needs a class-conditional checkpoint; this model has no classes, use {flag} uniform")
        bad = [k for k in labels if k >= classes]
        if bad:
            what = "styles" if flag == "--styles" else "classes"
            raise UserError(f"{flag} {spec}: {what} {bad} out of range; this model has {what} 0..{classes - 1}")
    source = row_source(args, registry.get(recipe.family), ckpt)
    identity = DatasetIdentity(
        family=recipe.family,
        recipe=recipe.model_dump(mode="json"),
        checkpoint=ckpt,
        checkpoint_sha256=checkpoint.weights_sha256(ckpt),
        seed=recipe.generate.seed if args.seed is None else args.seed,
        num_rows=args.num_samples or source.inputs * source.samples_per_input,
        rows_per_shard=args.rows_per_shard or recipe.generate.rows_per_shard,
        labels=labels,
        source=source,
        gate=parse_filter(args.filter, args.max_attempts or 4) if args.filter else None,
        device_kind="cuda" if args.gpu else "cpu",
        torch_version=torch.__version__,
        key_layout="spread" if args.spread_keys else "flat",
    )
    return identity, recipe.generate.batch_size


def with_audio(recipe, args: GenerateArgs):
    """The recipe with --audio / --sample-rate / --soundfont applied as `audio.*` recipe keys."""
    if not (args.audio or args.sample_rate or args.soundfont):
        return recipe
    if "audio" not in type(recipe).model_fields:
        raise UserError(f"--audio, --sample-rate and --soundfont need a music checkpoint; this is a {recipe.family} model")
    if not args.audio and not recipe.audio.enabled:
        raise UserError("--sample-rate and --soundfont set how audio is rendered: add --audio to render it")
    overrides = ["audio.enabled=true"]
    if args.sample_rate:
        overrides.append(f"audio.sample_rate={args.sample_rate}")
    data = apply_overrides(recipe.model_dump(mode="json"), overrides)
    if args.soundfont:
        data["audio"]["soundfont"] = args.soundfont  # a path, set as is (not parsed as YAML)
    return recipe_from_dict(data)


def row_source(args: GenerateArgs, family, ckpt: str) -> RowSource:
    """The row source the arguments name, if the family (a gen_jobs.core.family.Family) makes rows from it."""
    if args.prompts:
        if family.rows_from != "prompts":
            raise UserError(f"--prompts needs a model that continues prompts (text, music); {ckpt} is a "
                            f"{family.name} model")
        return plan_prompts(storage.absolute(args.prompts), args.prompt_column, args.samples_per_prompt, family.prompt_files)
    if args.input:
        if family.rows_from != "images":
            raise UserError(f"--input needs a model that transforms images (style transfer); {ckpt} is a "
                            f"{family.name} model")
        return plan_images(storage.absolute(args.input), args.input_column, args.samples_per_input)
    if family.rows_from == "images":
        raise UserError(f"a {family.name} model makes rows from input images: pass --input URI instead of --num-samples")
    return RowSource()


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


def write_manifest(out: str, identity: DatasetIdentity, entries: list[ShardEntry], lease: Lease | None = None,
                   command: list[str] | None = None, known_gate: dict[str, dict[str, int]] | None = None) -> Manifest:
    """Score the dataset, then record it: the manifest goes last, then the pending marker goes.

    Under a lease, the lease is checked first: a run that lost it writes no manifest.
    `known_gate`: the gate counts of the shards this run wrote, by file (see gate_counts).
    """
    fs, path = storage.resolve(storage.join(out, entries[0].file))
    schema = pq.read_schema(path, filesystem=fs)
    manifest = Manifest(
        **identity.model_dump(), shards=entries, schema_=schema_description(schema), quality=score(out, identity, entries),
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


def generate(args: GenerateArgs, log=print) -> Manifest:
    identity, micro_batch = plan(args, log)
    # One live run per --out: a second is refused; --resume / --overwrite take over a dead run's lease.
    with Lease(args.out, take_over=args.resume or args.overwrite) as lease:
        return _generate(args, identity, micro_batch, lease, log)


def _generate(args: GenerateArgs, identity: DatasetIdentity, micro_batch: int, lease: Lease, log) -> Manifest:
    import ray
    from ray.data import ActorPoolStrategy

    from gen_jobs.core.cluster import connect, quiet_data_progress

    manifest, found = output_folder.prepare(args.out, identity, args.resume, args.overwrite, log)
    recorded = (manifest.shards if manifest is not None
                else recorded_progress(args.out, identity, found.progress) if found.shards else [])
    todo, good = shards_to_write(identity, args.out, recorded, found.sizes)
    if not todo and manifest is not None:
        log(f"{args.out}: all {identity.num_shards} shards present and intact; nothing to do")
        remove_progress(args.out, found.progress)  # left by a run that stopped between its manifest and this
        if args.card and not found.card:  # a run that stopped between its manifest and its card
            write_card(args.out, manifest, manifest.quality, log)
        return manifest
    storage.write_bytes_atomic(storage.join(args.out, PENDING), identity.model_dump_json(indent=2).encode())
    if good:
        log(f"resuming: {len(good)} of {identity.num_shards} shards already done, {len(todo)} to write")

    if todo:
        connect()
        quiet_data_progress()
        pinned = ray.put(pin_checkpoint(identity))  # one copy for every actor, whatever happens to the folder
        stamps = ray.put(identity.source.stamps) if identity.source.stamps else None
    started = time.perf_counter()  # after Ray start-up: the rate is the pipeline's own
    if todo:
        workers = min(args.workers, len(todo))
        shards = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        written = shards.map_batches(
            ShardWriter,
            fn_constructor_kwargs={
                "identity": identity.model_dump(mode="json"),
                "out": storage.absolute(args.out),  # the workers' working directory may not be this one
                "micro_batch": micro_batch,
                "device": "cuda" if args.gpu else "cpu",
                "checkpoint_files": pinned,
                "run_id": lease.run_id,
                "input_stamps": stamps,
            },
            batch_size=1,
            # Up to `workers` actors, down to one if nodes go (a preempted node must not stall the job).
            compute=ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers),
            num_cpus=1,
            num_gpus=1 if args.gpu else 0,
        )
        rows_written, refused, known_gate = 0, "", {}
        rows_todo = sum(len(identity.shard_ids(k)) for k in todo)
        display = progress()
        progress_record = ProgressRecord(args.out, identity, lease, found.progress)
        for done, row in enumerate(written.iter_rows(), start=1):
            if row["refused"]:  # a shard refused its input: stop the job (the pipeline shuts down)
                refused = row["refused"]
                break
            entry = ShardEntry.model_validate({key: row[key] for key in ShardEntry.model_fields})
            good[entry.first_id // identity.rows_per_shard] = entry
            if row["gate"]:
                known_gate[entry.file] = json.loads(row["gate"])
            rows_written += entry.rows
            elapsed = max(time.perf_counter() - started, 1e-9)
            rate = rows_written / elapsed
            display.update(f"generating: {rows_written:,}/{rows_todo:,} rows ({done}/{len(todo)} shards), "
                           f"{rate:,.0f} rows/s, about {format_seconds((rows_todo - rows_written) / rate)} left")
            progress_record.update(good)
        display.done()
        if refused:
            raise UserError(refused)

    result = write_manifest(args.out, identity, [good[k] for k in range(identity.num_shards)], lease,
                            args.shaping_arguments(), known_gate if todo else None)
    remove_progress(args.out, progress_record.pieces if todo else found.progress)  # the manifest holds them now
    seconds = time.perf_counter() - started
    written_rows = sum(good[k].rows for k in todo)
    log(f"wrote {written_rows:,} rows in {len(todo)} shard{'' if len(todo) == 1 else 's'} to {args.out} in {seconds:.1f} s")
    if result.gate_counts:
        c = result.gate_counts
        log(f"filter {identity.gate.describe()}: {c['accepted_first_try']:,} of {c['requested']:,} rows passed at the "
            f"first try, {c['accepted_later']:,} later, {c['rejected']:,} rejected (status 'rejected')")
    if result.quality:
        log(f"quality: {result.quality['summary']}")
        for warning in result.quality.get("warnings", []):
            log(f"warning: {warning}")
    if args.card:
        lease.assert_held()
        write_card(args.out, result, result.quality, log)
    return result


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        ns = parser().parse_args(argv)
        args = validate_args(GenerateArgs, vars(ns))
        args = args.model_copy(update={"num_samples": smoke.num_samples(args.num_samples)})
        manifest = generate(args)
        print(f"dataset: {args.out} ({manifest.num_rows:,} rows, {len(manifest.shards)} shards)", flush=True)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
