"""Generate a sharded, verifiable dataset from a checkpoint with Ray Data.

    raygen generate --checkpoint URI --out URI (--num-samples N | --prompts URI
        [--prompt-column COL] [--samples-per-prompt K] | --input URI [--input-column COL]
        [--samples-per-input K] | --requests FILE.jsonl) [--rows-per-shard R] [--seed S]
        [--workers W] [--gpu] [--labels uniform|K[,K...]] [--resume] [--overwrite] [--set k=v ...]
        [family options: music --audio [--sample-rate HZ] [--soundfont SF2]; style --styles, --image-column]
        [--wait-for-training SECONDS]    (start before the model finished training: wait for it)
        [--spread-keys]                  (shards under OUT/00/ .. OUT/ff/: S3 request rates per prefix)
    python -m gen_jobs.generate ...        # the same, for `ray job submit`

Pipeline: shard ids -> actor pool of W ShardWriters (gen_jobs.data.shard_writer), each holding the family's
Sampler (row ids -> seeds (+ the shard's slice of prompts or input images,
gen_jobs.data.rows) -> samples in the recipe's fixed micro-batches ->
encoded columns (PNG for images) -> Parquet row groups of ~64 MiB streamed to an
atomic writer, storage.AtomicWriter) -> quality figures -> `_manifest.json`
written last (past 1,000 shards with its shard list, `_shards.parquet`; while
such a run goes on, the driver records the shards written every 30 s in
append-only pieces: gen_jobs.data.run_record.ProgressRecord).

Row i is a pure function of (checkpoint, recipe, base seed, i), so any number of
workers, first try or resumed, writes the same bytes. --resume regenerates only
shards that are missing or differ from the size the manifest (or an unfinished
run's shard list) records (one listing; see gen_jobs.data.run_record.shards_to_write).

A family's own options (Family.generate_options) are declared by the family: --help shows them under
its name, and they set its recipe keys or name a shared option; this module names no family.

Safety: the run holds --out's lease (gen_jobs.core.lease) from start to end; it
touches only files gen_jobs.data.output_folder proves are raygen's; the driver reads
the checkpoint once (checkpoint.pin) and every actor samples from that copy; every shard checks
that the input files it read (prompts, images) still carry the size and
modification time they had when the job was planned (gen_jobs.data.rows); an actor
that cannot see the lease in a local --out is on a node that does not share it
and refuses.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, NamedTuple

from pydantic import Field, field_validator, model_validator

from gen_jobs.cli_args import ArgumentParser, run_main, validate_args
from gen_jobs.core import checkpoint, metrics, registry, smoke, storage
from gen_jobs.core.console import format_seconds, progress
from gen_jobs.core.errors import UserError
from gen_jobs.core.family import Family, GenerateOption
from gen_jobs.core.lease import Lease
from gen_jobs.core.recipes import RecipeBase, StrictModel, apply_overrides, recipe_from_dict
from gen_jobs.data import output_folder
from gen_jobs.data.gate import parse_filter
from gen_jobs.data.manifest import (
    PENDING,
    DatasetIdentity,
    Manifest,
    ShardEntry,
    recorded_progress,
)
from gen_jobs.data.requests import plan_requests
from gen_jobs.data.rows import RowSource, plan_images, plan_prompts
from gen_jobs.data.run_record import ProgressRecord, remove_progress, shards_to_write, write_manifest
from gen_jobs.data.shard_attempts import retries, start_registry
from gen_jobs.data.shard_writer import ShardWriter
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
    requests: storage.Uri | None = None  # OpenAI batch input lines (gen_jobs.data.requests)
    set: list[str] = []
    rows_per_shard: int | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=0)
    workers: int = Field(2, gt=0, le=4096)
    gpu: bool = False
    labels: str = "uniform"
    options: dict[str, bool | int | str] = {}  # a family's own options by name (Family.generate_options)
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
        given = self.model_dump(exclude_defaults=True)
        for name, value in [*given.items(), *given.pop("options", {}).items()]:
            if name in ("out", "workers", "gpu", "resume", "overwrite", "card", "wait_for_training", "options"):
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
        given = [self.num_samples is not None, self.prompts is not None, self.input is not None,
                 self.requests is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of --num-samples N, --prompts URI, --input URI or --requests URI")
        return self

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: str) -> str:
        parse_labels(v)
        return v

    @field_validator("options")
    @classmethod
    def _known_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name, value in v.items():
            option = family_options().get(name)
            if option is None:
                raise ValueError(f"{name!r} is no family's generate option; they are: {', '.join(family_options())}")
            wanted = {"flag": bool, "int": int, "text": str}[option[1].kind]
            if type(value) is not wanted:
                raise ValueError(f"{option[1].flag} takes {'no value' if wanted is bool else wanted.__name__}, "
                                 f"not {value!r}")
        return v


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
    p.add_argument("--input-column", default="image", help="the input Parquet's image column (default: image)")
    p.add_argument("--samples-per-input", type=int, default=1, help="samples for each input image")
    p.add_argument("--requests", metavar="FILE.jsonl",
                   help="OpenAI batch input file (path or s3://): row i answers request line i as the model's HTTP "
                        "route would (gen_jobs/data/requests.py)")
    p.add_argument("--rows-per-shard", type=int, help="rows per part file (default: the recipe's)")
    p.add_argument("--seed", type=int, help="base seed (default: the recipe's)")
    p.add_argument("--workers", type=int, default=2, help="sampler actors")
    p.add_argument("--gpu", action="store_true", help="one GPU per sampler actor")
    p.add_argument("--labels", default="uniform", help="'uniform' (drawn per row) or K[,K...] cycled by row id")
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
    for family in (registry.get(name) for name in registry.names()):  # each family's own, under its name
        if family.generate_options:
            group = p.add_argument_group(f"{family.name} models")
            for option in family.generate_options:
                kind = ({"action": "store_true", "default": None} if option.kind == "flag"
                        else {"type": int if option.kind == "int" else str, "metavar": option.metavar})
                group.add_argument(option.flag, dest=OPTION + option.name, help=option.help, **kind)
    return p


# What answers the lines of a --requests dataset on the ShardWriters: the online routes' own code.
ANSWERER = "serving.batch_lines:Answerer"

OPTION = "option:"  # the argparse dest prefix of family options, gathered into GenerateArgs.options


def family_options() -> dict[str, tuple[Family, GenerateOption]]:
    """Every family's generate options by name, with the family that declares it."""
    return {option.name: (family, option) for family in map(registry.get, registry.names())
            for option in family.generate_options}


def parsed_args(namespace: dict[str, Any]) -> dict[str, Any]:
    """argparse's namespace as GenerateArgs fields: the family options given gathered into `options`."""
    options = {key[len(OPTION):]: value for key, value in namespace.items()
               if key.startswith(OPTION) and value is not None}
    return {**{k: v for k, v in namespace.items() if not k.startswith(OPTION)}, "options": options}


# ---------------------------------------------------------------- one shard


class Plan(NamedTuple):
    """What a run writes: the dataset's identity, the sampler's micro-batch, and the checkpoint, read once."""

    identity: DatasetIdentity
    micro_batch: int
    checkpoint: checkpoint.Pinned


def plan(args: GenerateArgs, log=print) -> Plan:
    import torch

    storage.check_lasting(args.out, "--out")
    if args.wait_for_training:
        checkpoint.wait_until_trained(args.checkpoint, args.wait_for_training, log)
    ckpt = checkpoint.latest(args.checkpoint)  # a run folder names its newest checkpoint
    if ckpt != args.checkpoint.rstrip("/"):
        log(f"checkpoint: {ckpt} (the newest in {args.checkpoint})")
    pinned = checkpoint.pin(ckpt)  # files, weights' sha256 and recipe: the only read of the checkpoint
    family = registry.get(pinned.recipe.family)
    data = apply_overrides(pinned.recipe.model_dump(mode="json"), args.set)
    args, flags = apply_family_options(args, family, ckpt, data)
    label_flag = flags.get("labels", "--labels")  # style says --styles
    recipe = recipe_from_dict(data) if args.set or args.options else pinned.recipe
    recipe = recipe.for_dataset()
    try:
        labels = parse_labels(args.labels)
    except ValueError as e:
        raise UserError(f"{label_flag} {args.labels}: {e}") from None
    if labels is not None:
        classes = recipe.row_classes()
        if classes is None:
            raise UserError(f"{label_flag} needs a class-conditional checkpoint; this model has no classes, "
                            f"use {label_flag} uniform")
        bad = [k for k in labels if k >= classes]
        if bad:
            what = label_flag.removeprefix("--")
            raise UserError(f"{label_flag} {args.labels}: {what} {bad} out of range; this model has {what} "
                            f"0..{classes - 1}")
    source = row_source(args, family, ckpt, recipe)
    identity = DatasetIdentity(
        family=recipe.family,
        recipe=recipe.model_dump(mode="json"),
        checkpoint=ckpt,
        checkpoint_sha256=pinned.sha256,
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
    return Plan(identity, recipe.generate.batch_size, pinned)


def apply_family_options(args: GenerateArgs, family: Family, ckpt: str,
                         recipe: dict) -> tuple[GenerateArgs, dict[str, str]]:
    """Apply `args.options`, the family's own generate options, to the run.

    An option that sets a recipe key sets it in `recipe` (the recipe as a mapping, after --set); one that is
    the family's name for a shared option (style's --styles for --labels) becomes that option's value.
    Returns the arguments and {shared option: the family's flag that gave it} (style: {"labels": "--styles"}),
    for errors to name the flag the user typed.
    """
    own = {option.name: option for option in family.generate_options}
    shared, flags = {}, {}
    for name, value in args.options.items():
        if name not in own:
            owner, option = family_options()[name]
            raise UserError(f"{option.flag} is an option of {owner.name} models; {ckpt} is a {family.name} model")
        option = own[name]
        if option.recipe_key:
            *sections, key = option.recipe_key.split(".")
            node = recipe
            for section in sections:
                node = node.setdefault(section, {})
            node[key] = value  # as typed: a path stays a path (not parsed as YAML, as --set values are)
            continue
        same = "--" + option.same_as.replace("_", "-")
        if getattr(args, option.same_as) != GenerateArgs.model_fields[option.same_as].default:
            raise UserError(f"give {option.flag} or {same}, not both (they are the same setting)")
        shared[option.same_as], flags[option.same_as] = value, option.flag
    for name in args.options:
        needs = own[name].needs
        if needs and not _recipe_value(recipe, needs):
            flag = next((o.flag for o in own.values() if o.recipe_key == needs), f"--set {needs}=true")
            raise UserError(f"{own[name].flag} sets how {needs.split('.')[0]} is made: add {flag} to make it")
    return args.model_copy(update=shared), flags


def _recipe_value(recipe: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        recipe = recipe.get(part, {}) if isinstance(recipe, dict) else {}
    return recipe


def row_source(args: GenerateArgs, family: Family, ckpt: str, recipe: RecipeBase) -> RowSource:
    """The row source the arguments name, if the model (`recipe`, of `family`, a gen_jobs.core.family.Family)
    makes rows from it (recipe.rows_from: ids, prompts or images)."""
    rows_from = recipe.rows_from(family.rows_from)
    if args.prompts:
        if rows_from != "prompts":
            raise UserError(f"--prompts needs a model that continues prompts (text, music) or draws images from "
                            f"them (a text-to-image pipeline); {ckpt} is a {family.name} model that does not")
        return plan_prompts(storage.absolute(args.prompts), args.prompt_column, args.samples_per_prompt, family.prompt_files)
    if args.requests:
        if family.serve_api is None:
            raise UserError(f"--requests needs a model with an HTTP API; {ckpt} is a {family.name} model, which has none")
        for flag, given in (("--filter", args.filter), ("--labels", args.labels != "uniform")):
            if given:
                raise UserError(f"{flag} does not apply to --requests: each line's body says what it asks for")
        return plan_requests(storage.absolute(args.requests))
    if args.input:
        if rows_from != "images":
            raise UserError(f"--input needs a model that transforms images (style transfer); {ckpt} is a "
                            f"{family.name} model")
        return plan_images(storage.absolute(args.input), args.input_column, args.samples_per_input)
    if rows_from == "images":
        raise UserError(f"a {family.name} model makes rows from input images: pass --input URI instead of --num-samples")
    return RowSource()


def generate(args: GenerateArgs, log=print) -> Manifest:
    planned = plan(args, log)
    # One live run per --out: a second is refused; --resume / --overwrite take over a dead run's lease.
    with Lease(args.out, take_over=args.resume or args.overwrite) as lease:
        return _generate(args, planned, lease, log)


def _generate(args: GenerateArgs, planned: Plan, lease: Lease, log) -> Manifest:
    import ray
    from ray.data import ActorPoolStrategy

    from gen_jobs.core.cluster import connect, quiet_data_progress

    identity = planned.identity
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
        pinned = ray.put(planned.checkpoint)  # one copy for every actor, whatever happens to the folder
        tags = metrics.generation_tags(storage.absolute(args.out))  # the run's metrics' labels (core/metrics.py)
        stamps = ray.put(identity.source.stamps) if identity.source.stamps else None
        attempts = start_registry()  # counts shards started again after their actor died (shard retries)
    started = time.perf_counter()  # after Ray start-up: the rate is the pipeline's own
    if todo:
        workers = min(args.workers, len(todo))
        shards = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        written = shards.map_batches(
            ShardWriter,
            fn_constructor_kwargs={
                "identity": identity.model_dump(mode="json"),
                "out": storage.absolute(args.out),  # the workers' working directory may not be this one
                "micro_batch": planned.micro_batch,
                "device": "cuda" if args.gpu else "cpu",
                "pinned": pinned,
                "run_id": lease.run_id,
                "input_stamps": stamps,
                "metric_tags": tags,
                "attempts": attempts,
                "answerer": ANSWERER,
            },
            batch_size=1,
            # Up to `workers` actors, down to one if nodes go (a preempted node must not stall the job).
            compute=ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers),
            num_cpus=1,
            num_gpus=1 if args.gpu else 0,
        )
        rows_written, refused, known_gate = 0, "", {}
        rows_todo = sum(len(identity.shard_ids(k)) for k in todo)
        gauges = metrics.generation()
        gauges.rows_left.set(rows_todo, tags)
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
            gauges.rows_left.set(rows_todo - rows_written, tags)
            gauges.rows_per_second.set(rate, tags)
            display.update(f"generating: {rows_written:,}/{rows_todo:,} rows ({done}/{len(todo)} shards), "
                           f"{rate:,.0f} rows/s, about {format_seconds((rows_todo - rows_written) / rate)} left")
            progress_record.update(good)
        display.done()
        if refused:
            raise UserError(refused)

    entries = [good[k] for k in range(identity.num_shards)]
    result = write_manifest(args.out, identity, entries, score(args.out, identity, entries), lease,
                            args.shaping_arguments(), known_gate if todo else None)
    remove_progress(args.out, progress_record.pieces if todo else found.progress)  # the manifest holds them now
    seconds = time.perf_counter() - started
    written_rows = sum(good[k].rows for k in todo)
    retried = retries(attempts) if todo else 0
    log(f"wrote {written_rows:,} rows in {len(todo)} shard{'' if len(todo) == 1 else 's'} to {args.out} in {seconds:.1f} s"
        + (f" ({retried} shard{'' if retried == 1 else 's'} started again after its worker died)" if retried else ""))
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


def parse(argv: list[str] | None = None) -> GenerateArgs:
    """The command line as validated arguments, a family's own options gathered into `options` (argparse exits
    on an unknown flag; a bad value is a UserError)."""
    return validate_args(GenerateArgs, parsed_args(vars(parser().parse_args(argv))))


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse(argv)
        args = args.model_copy(update={"num_samples": smoke.num_samples(args.num_samples)})
        manifest = generate(args)
        print(f"dataset: {args.out} ({manifest.num_rows:,} rows, {len(manifest.shards)} shards)", flush=True)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
