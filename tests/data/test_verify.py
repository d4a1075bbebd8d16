"""Manifest and verify: a good dataset passes; corrupt, missing and stray shards are named.

Datasets here are written in-process by the ShardWriter that Ray Data's actors run.
"""

import json

import numpy as np
import pytest

from gen_jobs.core.errors import UserError
from gen_jobs.data.manifest import ShardEntry, read_manifest, read_shards
from gen_jobs.data.run_record import write_manifest
from gen_jobs.data.shard_writer import ShardWriter
from gen_jobs.generate import ANSWERER, GenerateArgs, plan
from gen_jobs.quality.scoring import score
from gen_jobs.verify import main as verify_main


def make_dataset(checkpoint: str, out: str, num_samples: int = 50, rows_per_shard: int = 20, seed: int = 0) -> None:
    args = GenerateArgs(checkpoint=checkpoint, out=out, num_samples=num_samples, rows_per_shard=rows_per_shard, seed=seed)
    write_dataset(plan(args), out)


def write_dataset(planned, out: str) -> None:
    """A plan's whole dataset, written in this process as `raygen generate` writes it: shards, figures, manifest."""
    entries = write_in_process(planned, out)
    write_manifest(out, planned.identity, entries, score(out, planned.identity, entries))


def write_in_process(planned, out: str, micro_batch: int | None = None) -> list[ShardEntry]:
    """Every shard of a plan (generate.plan), written by one ShardWriter in this process (in micro-batches of
    `micro_batch` rows, default the plan's); their manifest entries."""
    identity = planned.identity
    writer = ShardWriter(identity.model_dump(mode="json"), out, micro_batch or planned.micro_batch, "cpu",
                         planned.checkpoint, answerer=ANSWERER)
    columns = writer({"shard": np.arange(identity.num_shards)})
    return [ShardEntry(**{key: columns[key][k] for key in ShardEntry.model_fields}) for k in range(identity.num_shards)]


@pytest.fixture()
def dataset(random_checkpoint, tmp_path):
    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out))
    return out


def test_manifest_records_every_shard(dataset, random_checkpoint):
    manifest = read_manifest(str(dataset))
    assert [(s.file, s.first_id, s.rows) for s in manifest.shards] == [
        ("part-00000.parquet", 0, 20), ("part-00001.parquet", 20, 20), ("part-00002.parquet", 40, 10)
    ]
    raw = json.loads((dataset / "_manifest.json").read_text())
    assert raw["checkpoint"] == random_checkpoint and len(raw["checkpoint_sha256"]) == 64
    assert raw["seed"] == 0 and raw["num_rows"] == 50 and raw["rows_per_shard"] == 20
    assert [f["name"] for f in raw["schema"]["fields"]] == ["id", "seed", "label", "confidence", "train_distance",
                                                        "train_distance_pixels", "copy", "image"]
    assert raw["recipe"]["family"] == "dcgan" and raw["raygen_version"]
    assert not (dataset / "_pending.json").exists()


@pytest.mark.parametrize("max_rows", [None, 5])
def test_reading_a_column_the_shards_lack_names_it_whether_or_not_rows_are_limited(dataset, max_rows):
    shards = read_manifest(str(dataset)).shards
    assert read_shards(str(dataset), shards, ["id", "label"], max_rows=max_rows).num_rows == (max_rows or 50)
    with pytest.raises(UserError, match=r"part-00000.parquet has no column prompt \(its columns: id, seed, label"):
        read_shards(str(dataset), shards, ["id", "prompt"], max_rows=max_rows)


def test_verify_passes_with_one_line(dataset, capsys):
    assert verify_main([str(dataset)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("OK") and "3 shards" in out[0] and "50 rows" in out[0]
    # the identity it checked: how the rows were made
    assert "made by: dcgan" in out[1] and "noise splitmix64-counter-v1" in out[1] and "made on cpu with torch" in out[1]


def test_verify_names_corrupt_missing_and_stray_files(dataset, capsys):
    data = bytearray((dataset / "part-00001.parquet").read_bytes())
    data[100] ^= 0xFF  # the same size: only reading the bytes can tell
    (dataset / "part-00001.parquet").write_bytes(bytes(data))
    (dataset / "part-00002.parquet").unlink()
    (dataset / "part-00007.parquet").write_bytes(b"stray")
    assert verify_main([str(dataset)]) == 1  # from the listing: names, sizes, strays
    out = capsys.readouterr().out
    assert "part-00002.parquet: missing" in out and "part-00007.parquet: stray" in out
    assert "part-00001.parquet" not in out and "part-00000.parquet" not in out
    assert verify_main([str(dataset), "--deep"]) == 1  # reading every shard
    out = capsys.readouterr().out
    assert "part-00001.parquet: sha256 mismatch" in out and "part-00002.parquet: missing" in out
    assert "part-00000.parquet" not in out


def test_verify_sees_a_shard_of_another_size_from_the_listing_alone(dataset, capsys):
    shard = dataset / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated
    assert verify_main([str(dataset)]) == 1
    assert "part-00000.parquet: " in (out := capsys.readouterr().out) and "manifest says" in out and "truncated" in out


def test_verify_without_manifest(tmp_path, capsys):
    (tmp_path / "part-00000.parquet").write_bytes(b"x")
    assert verify_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no _manifest.json" in err and "--resume" in err


def test_a_run_folder_as_checkpoint_means_its_newest_checkpoint(random_checkpoint, tmp_path):
    import shutil

    run = tmp_path / "run"
    for name in ("checkpoint_2026-11-01_10-00-00.000000", "checkpoint_2026-11-02_10-00-00.000000"):
        shutil.copytree(random_checkpoint, run / name)
    said = []
    identity = plan(GenerateArgs(checkpoint=str(run), out=str(tmp_path / "data"), num_samples=10), log=said.append).identity
    newest = str(run / "checkpoint_2026-11-02_10-00-00.000000")
    assert identity.checkpoint == newest  # what the manifest records
    assert said == [f"checkpoint: {newest} (the newest in {run})"]


def test_verify_runs_without_torch():
    """`raygen verify` aborted at exit (134) in ~1 run of 20 while torch's thread pools were loaded; it needs none."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, gen_jobs.verify; print(sorted(m for m in sys.modules "
                             "if m.split('.')[0] in ('torch', 'ray')))"], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
