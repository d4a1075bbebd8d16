"""A dataset of 100,000 shards: resuming it complete or unfinished and verifying it take time
proportional to shards (one listing, the manifest and its shard list), not bytes.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/resources/test_scale.py -s     # prints the figures

The shards are tiny stand-in files of the size the manifest records (what a listing
sees of real ones); the manifest is the one `raygen generate` would write for them,
built from the identity `plan` makes for the same arguments, so `--resume` accepts it.
Nothing here reads a shard: a test that read them would fail on the stand-ins.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gen_jobs.data.manifest import (
    INLINE_SHARDS,
    MANIFEST,
    SHARD_LIST,
    Manifest,
    ShardEntry,
    read_manifest,
    read_shard_list,
    shard_name,
)
from gen_jobs.data.output_folder import survey
from gen_jobs.data.run_record import shards_to_write
from gen_jobs.generate import GenerateArgs, generate, plan
from gen_jobs.verify import problems

pytestmark = pytest.mark.slow

NUM_SHARDS = 100_000
ROWS_PER_SHARD = 20
SHARD_BYTES = 48


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory, random_checkpoint_module):
    out = tmp_path_factory.mktemp("scale") / "data"
    args = GenerateArgs(checkpoint=random_checkpoint_module, out=str(out), num_samples=NUM_SHARDS * ROWS_PER_SHARD,
                        rows_per_shard=ROWS_PER_SHARD, resume=True, card=False)
    started = time.perf_counter()
    identity = plan(args, log=lambda _: None).identity
    planned = time.perf_counter() - started
    out.mkdir(parents=True)
    stand_in = b"x" * SHARD_BYTES
    entries = []
    for k in range(NUM_SHARDS):
        (out / shard_name(k)).write_bytes(stand_in)
        entries.append(ShardEntry(file=shard_name(k), first_id=k * ROWS_PER_SHARD, rows=ROWS_PER_SHARD,
                                  sha256="0" * 64, bytes=SHARD_BYTES))
    manifest = Manifest(**identity.model_dump(), shards=entries, schema_={"fields": []})
    for name, data in manifest.files().items():
        (out / name).write_bytes(data)
    return args, planned


@pytest.fixture(scope="module")
def random_checkpoint_module(tmp_path_factory) -> str:
    import torch

    from conftest import TINY
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.dcgan.training import GAN

    folder = tmp_path_factory.mktemp("scale") / "ckpt"
    GAN(load_recipe("dcgan_digits", TINY), torch.device("cpu")).save(folder, {"epoch": 1})
    return str(folder)


def test_resume_of_a_complete_100k_shard_dataset_reads_no_shard_and_takes_seconds(big_dataset):
    args, planned = big_dataset
    said = []
    started = time.perf_counter()
    manifest = generate(args, log=said.append)
    resumed = time.perf_counter() - started
    assert said[-1] == f"{args.out}: all {NUM_SHARDS} shards present and intact; nothing to do"
    assert len(manifest.shards) == NUM_SHARDS
    print(f"\n{NUM_SHARDS:,} shards: plan {planned:.1f} s, --resume of the complete dataset {resumed:.1f} s")
    assert resumed < 120


def test_verify_of_a_100k_shard_dataset_uses_the_listing_and_takes_seconds(big_dataset):
    args, _ = big_dataset
    started = time.perf_counter()
    bad, summary = problems(args.out, deep=False)
    took = time.perf_counter() - started
    assert bad == [] and f"{NUM_SHARDS} shards" in summary
    print(f"\n{NUM_SHARDS:,} shards: verify (listing and sizes) {took:.1f} s")
    assert took < 120
    replaced = Path(args.out) / shard_name(NUM_SHARDS // 2)
    replaced.write_bytes(b"short")  # one replaced by a file of another size
    bad, _ = problems(args.out, deep=False)
    replaced.write_bytes(b"x" * SHARD_BYTES)  # (the dataset as it was, for the tests after this one)
    assert bad == [f"{shard_name(NUM_SHARDS // 2)}: 5 bytes, manifest says 48 (truncated, replaced or modified)"]


def test_a_100k_shard_manifest_is_a_small_header_and_a_columnar_shard_list(big_dataset):
    args, _ = big_dataset
    header, listing = Path(args.out) / MANIFEST, Path(args.out) / SHARD_LIST
    started = time.perf_counter()
    manifest = read_manifest(args.out)
    took = time.perf_counter() - started
    assert len(manifest.shards) == NUM_SHARDS and manifest.shards[-1].first_id == (NUM_SHARDS - 1) * ROWS_PER_SHARD
    print(f"\n{NUM_SHARDS:,} shards: {MANIFEST} {header.stat().st_size:,} bytes, {SHARD_LIST} "
          f"{listing.stat().st_size:,} bytes, read in {took:.1f} s")
    assert header.stat().st_size < 20_000 and listing.stat().st_size < 40 * NUM_SHARDS


def test_an_unfinished_100k_shard_run_resumes_from_its_progress_record_without_reading_a_shard(big_dataset, tmp_path):
    """The record a run keeps of the shards it wrote (SHARD_LIST, without a manifest) vouches for them by size."""
    args, _ = big_dataset
    identity = plan(args, log=lambda _: None).identity
    digest, recorded = read_shard_list((Path(args.out) / SHARD_LIST).read_bytes())
    assert digest == identity.digest()
    recorded = recorded[:-1000]  # the run stopped before recording its last 1,000 shards
    started = time.perf_counter()
    found = survey(args.out, {shard_name(k) for k in range(identity.num_shards)})  # as its _pending.json names them
    todo, good = shards_to_write(identity, args.out, recorded, found.sizes)
    took = time.perf_counter() - started
    print(f"\n{NUM_SHARDS:,} shards: planning the resume of a run recorded up to {len(recorded):,} shards {took:.1f} s")
    # The recorded stand-ins are kept unread; the 1,000 unrecorded ones are read and fail their proof.
    assert len(good) == NUM_SHARDS - 1000 and todo == list(range(NUM_SHARDS - 1000, NUM_SHARDS))
    assert took < 120


def test_a_dataset_of_over_1000_shards_keeps_its_shard_list_beside_a_small_manifest(ray_cluster, random_checkpoint,
                                                                                     tmp_path):
    """Real shards, past INLINE_SHARDS: the manifest names `_shards.parquet`; readers see only the data;
    an unfinished run's shard list lets --resume keep every shard by its size, unread."""
    import datasets
    import ray

    out = tmp_path / "many"
    num_shards = INLINE_SHARDS + 1
    args = GenerateArgs(checkpoint=random_checkpoint, out=str(out), num_samples=2 * num_shards, rows_per_shard=2)
    manifest = generate(args, log=lambda _: None)
    header = json.loads((out / MANIFEST).read_text())
    assert "shards" not in header and header["shard_list"]["shards"] == num_shards
    assert read_manifest(str(out)).shards == manifest.shards
    assert problems(str(out))[0] == []  # --deep: every shard read, by Ray tasks of 256 shards each
    from ray.util.state import list_tasks

    readers = list_tasks(filters=[("func_or_class_name", "=", "_read_chunk")], raise_on_missing_output=False)
    assert len(readers) >= -(-num_shards // 256)  # (their states reach the state API a little later)
    assert ray.data.read_parquet(str(out)).count() == 2 * num_shards  # the shard list is not read as data
    rows = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))  # through the card's config
    assert rows.num_rows == 2 * num_shards

    # The run "stops" before its manifest: its shard list is what it recorded. A shard edited since,
    # keeping its size, is kept by --resume without a proof (its record vouches for it) and found by verify --deep.
    (out / "_pending.json").write_text(manifest.identity().model_dump_json())
    (out / MANIFEST).unlink()
    damaged = out / shard_name(7)
    digest = manifest.identity().digest().encode()  # in its footer's tag: a same-size edit Parquet readers still read
    damaged.write_bytes(damaged.read_bytes().replace(digest, digest[::-1]))
    said = []
    generate(args.model_copy(update={"resume": True}), log=said.append)
    assert f"resuming: {num_shards} of {num_shards} shards already done, 0 to write" in said
    assert problems(str(out), deep=False)[0] == []
    assert problems(str(out))[0] == [f"{shard_name(7)}: sha256 mismatch (corrupt or modified)"]


def test_a_shard_is_written_row_group_by_row_group_with_the_same_rows(random_checkpoint, tmp_path, monkeypatch):
    """A worker holds one row group, not the shard: shards larger than ROW_GROUP_BYTES are cut into several."""
    import pyarrow.parquet as pq

    from gen_jobs.core import registry
    from gen_jobs.data import shard_writer

    args = GenerateArgs(checkpoint=random_checkpoint, out=str(tmp_path), num_samples=200, rows_per_shard=200)
    identity, micro_batch, _ = plan(args, log=lambda _: None)
    family = registry.get(identity.family)
    sampler = family.load("sampler")(random_checkpoint, "cpu", family.load("recipe").model_validate(identity.recipe))
    shard_writer.write_shard(sampler, family.load("to_table"), identity, str(tmp_path / "whole"), 0, 16)
    monkeypatch.setattr(shard_writer, "ROW_GROUP_BYTES", 20_000)  # a few micro-batches of 16 rows a group
    cut = shard_writer.write_shard(sampler, family.load("to_table"), identity, str(tmp_path / "cut"), 0, 16).entry
    whole_file, cut_file = pq.ParquetFile(tmp_path / "whole" / shard_name(0)), pq.ParquetFile(tmp_path / "cut" / shard_name(0))
    assert whole_file.num_row_groups == 1 and cut_file.num_row_groups > 3
    assert max(cut_file.metadata.row_group(i).num_rows for i in range(cut_file.num_row_groups)) < 200
    assert cut_file.read().equals(whole_file.read())  # the same rows, tag and schema
    assert cut_file.schema_arrow.metadata == whole_file.schema_arrow.metadata
    assert (cut.bytes, cut.rows) == ((tmp_path / "cut" / shard_name(0)).stat().st_size, 200)


def test_spread_keys_put_shard_k_under_folder_k_mod_256_where_every_reader_finds_it(ray_cluster, random_checkpoint,
                                                                                    s3_server, tmp_path):
    import datasets

    from gen_jobs.core.errors import UserError

    out = tmp_path / "spread"
    args = GenerateArgs(checkpoint=random_checkpoint, out=str(out), num_samples=60, rows_per_shard=20, spread_keys=True)
    manifest = generate(args, log=lambda _: None)
    paths = ["00/part-00000.parquet", "01/part-00001.parquet", "02/part-00002.parquet"]
    assert [e.file for e in manifest.shards] == paths
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == paths
    assert problems(str(out))[0] == []
    assert datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf")).num_rows == 60  # the card's config
    said = []
    generate(args.model_copy(update={"resume": True}), log=said.append)
    assert said[-1] == f"{out}: all 3 shards present and intact; nothing to do"

    (out / "01" / "part-00001.parquet").rename(out / "01" / "part-00009.parquet")
    assert problems(str(out), deep=False)[0] == ["01/part-00001.parquet: missing",
                                                 "01/part-00009.parquet: stray file not in the manifest"]
    with pytest.raises(UserError, match="key layout \\(made spread, now flat: give --spread-keys\\)"):
        generate(args.model_copy(update={"resume": True, "spread_keys": False}), log=lambda _: None)
    flat = generate(args.model_copy(update={"overwrite": True, "spread_keys": False}), log=lambda _: None)
    assert [e.file for e in flat.shards] == [shard_name(k) for k in range(3)]
    assert not any(p.is_dir() for p in out.iterdir())  # the spread layout's folders went with its shards

    s3 = "s3://raygen/spread-keys"
    manifest = generate(args.model_copy(update={"out": s3, "num_samples": 40}), log=lambda _: None)
    assert [e.file for e in manifest.shards] == paths[:2] and problems(s3)[0] == []


def test_an_unfinished_runs_record_is_append_only_and_folded_every_so_often(random_checkpoint, tmp_path):
    """Each record holds only the shards written since the last (a million-shard run writes each entry about once,
    not the whole list every 30 s); every COMPACT_EVERY pieces they fold into SHARD_LIST; --resume reads them all."""
    from gen_jobs.core.lease import Lease
    from gen_jobs.data.manifest import recorded_progress
    from gen_jobs.data.run_record import ProgressRecord

    out = tmp_path / "many"
    args = GenerateArgs(checkpoint=random_checkpoint, out=str(out), num_samples=2 * (INLINE_SHARDS + 1), rows_per_shard=2)
    identity = plan(args, log=lambda _: None).identity

    def entry(k: int) -> ShardEntry:
        return ShardEntry(file=shard_name(k), first_id=2 * k, rows=2, sha256=f"{k:064x}", bytes=100)

    good: dict[int, ShardEntry] = {}
    with Lease(str(out)) as lease:
        record = ProgressRecord(str(out), identity, lease, [])
        record.RECORD_SECONDS, record.COMPACT_EVERY = 0.0, 3
        sizes = []
        for written in (100, 150, 400):  # three records of 100, 50 and 250 new shards
            good.update((k, entry(k)) for k in range(len(good), written))
            record.update(good)
            sizes.append(read_shard_list((out / record.pieces[-1]).read_bytes())[1])
        assert [len(piece) for piece in sizes] == [100, 50, 250]  # each piece: the new entries alone
        assert sorted(p.name for p in out.glob("_progress-*")) == ["_progress-000000.parquet", "_progress-000001.parquet",
                                                                    "_progress-000002.parquet"]
        found = survey(str(out), set())
        assert found.progress == record.pieces and found.foreign == []  # raygen's own state
        assert [e.file for e in recorded_progress(str(out), identity, found.progress)] == [shard_name(k) for k in range(400)]

        good.update((k, entry(k)) for k in range(400, 450))
        record.update(good)  # the fourth record folds all into SHARD_LIST and removes the pieces
        assert list(out.glob("_progress-*")) == [] and len(read_shard_list((out / SHARD_LIST).read_bytes())[1]) == 450
        good.update((k, entry(k)) for k in range(450, 460))
        record.update(good)  # then pieces again, after the fold
        assert len(read_shard_list((out / record.pieces[-1]).read_bytes())[1]) == 10
        pieces = survey(str(out), set()).progress
        assert len(recorded_progress(str(out), identity, pieces)) == 460
