"""Ray integration on the session's local cluster: train, generate, resume, crash, S3."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import REPO, TINY, read_rows
from gen_jobs.core import storage
from gen_jobs.core.checkpoint import read_recipe
from gen_jobs.core.recipes import load_recipe
from gen_jobs.data.images import decode_png
from gen_jobs.generate import GenerateArgs, generate
from gen_jobs.verify import problems


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


def run_generate(checkpoint: str, out, workers: int = 2, **kw) -> None:
    args = dict(checkpoint=checkpoint, out=str(out), num_samples=600, rows_per_shard=150, workers=workers)
    generate(GenerateArgs(**{**args, **kw}), log=lambda *_: None)


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory) -> Path:
    """The dataset every other run must reproduce byte for byte (2 workers, uninterrupted)."""
    out = tmp_path_factory.mktemp("reference")
    run_generate(checkpoint, out, workers=2)
    return out


def test_two_worker_training_writes_a_self_contained_checkpoint(checkpoint):
    files = set(os.listdir(checkpoint))
    assert {"model.safetensors", "generator.safetensors", "discriminator.safetensors", "recipe.json", "raygen.json"} <= files
    info = json.loads((Path(checkpoint) / "raygen.json").read_text())
    assert info["epoch"] == 1 and info["family"] == "dcgan"
    assert {"loss_d", "loss_g", "classes_covered", "kl_to_uniform"} <= set(info["metrics"])
    assert read_recipe(checkpoint) == load_recipe("dcgan_digits", TINY)


def test_dataset_layout_and_contents(reference):
    assert sorted(p.name for p in reference.iterdir()) == [
        "README.md", "_card.json", "_manifest.json", "card-samples.png", "card-training.png",
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "part-00003.parquet", "quality.json",
    ]  # the shards, their manifest and the dataset card (gen_jobs.quality.card)
    assert problems(str(reference))[0] == []
    table = pq.read_table(reference / "part-00002.parquet")
    assert table.column("id").to_pylist() == list(range(300, 450))
    assert table.schema.field("label").type == "int64"
    image = decode_png(table.column("image")[0].as_py()["bytes"])
    assert image.shape == (32, 32, 1)
    labels = read_rows(reference, columns=["label"]).column("label").to_numpy()
    assert set(labels) == set(range(10))  # uniform labels by default


def test_one_and_two_workers_write_identical_shards(checkpoint, reference, tmp_path):
    run_generate(checkpoint, tmp_path, workers=1)
    assert shard_bytes(tmp_path) == shard_bytes(reference)
    assert (tmp_path / "_manifest.json").read_bytes() == (reference / "_manifest.json").read_bytes()


def test_fixed_labels_cycle_by_row_id(checkpoint, tmp_path):
    run_generate(checkpoint, tmp_path, num_samples=30, rows_per_shard=30, labels="3,7")
    labels = pq.read_table(tmp_path / "part-00000.parquet").column("label").to_pylist()
    assert labels == [3, 7] * 15


def test_resume_rewrites_only_missing_and_corrupt_shards(checkpoint, reference, tmp_path):
    run_generate(checkpoint, tmp_path)
    (tmp_path / "part-00001.parquet").write_bytes(b"garbage")
    (tmp_path / "part-00003.parquet").unlink()
    untouched = {n: (tmp_path / n).stat().st_mtime_ns for n in ("part-00000.parquet", "part-00002.parquet")}
    run_generate(checkpoint, tmp_path, resume=True)
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in untouched} == untouched
    assert shard_bytes(tmp_path) == shard_bytes(reference)
    assert problems(str(tmp_path))[0] == []


def test_killed_run_resumes_to_the_same_bytes(ray_cluster, checkpoint, tmp_path):
    """SIGKILL the generation driver after its first shard lands, then --resume."""
    out, uninterrupted = tmp_path / "data", tmp_path / "uninterrupted"
    size = ["--num-samples", "4000", "--rows-per-shard", "100"]  # 40 shards: seconds of work left to kill
    cmd = [sys.executable, "-m", "gen_jobs.generate", "--checkpoint", checkpoint, "--out", str(out), *size, "--workers", "1"]
    # The subprocess joins the session's cluster through RAY_ADDRESS, as `ray job submit` would.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "part-00000.parquet").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "generation ended before its first shard"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "_manifest.json").exists() and (out / "_pending.json").exists()
    assert len(list(out.glob("part-*.parquet"))) < 40

    run_generate(checkpoint, out, num_samples=4000, rows_per_shard=100, resume=True)
    assert not list(out.glob(".*.tmp"))  # half-written temporaries of the killed run are gone
    run_generate(checkpoint, uninterrupted, num_samples=4000, rows_per_shard=100)
    assert problems(str(out))[0] == []
    assert shard_bytes(out) == shard_bytes(uninterrupted)


@pytest.mark.slow
def test_s3_train_generate_verify_and_read_back(ray_cluster, s3_server):
    from gen_jobs.train import train
    from gen_jobs.verify import main as verify_main

    ckpt = train(load_recipe("dcgan_digits", TINY), "s3://raygen/runs", "tiny-s3", workers=2, gpu=False)
    assert ckpt.startswith("s3://raygen/runs/tiny-s3/checkpoint_")
    assert read_recipe(ckpt).name == "dcgan_digits"
    out = "s3://raygen/datasets/digits"
    generate(GenerateArgs(checkpoint=ckpt, out=out, num_samples=300, rows_per_shard=100, workers=2), log=lambda *_: None)
    assert verify_main([out]) == 0
    fs, path = storage.resolve(out)
    table = pq.read_table(path + "/part-00001.parquet", filesystem=fs)
    assert table.column("id").to_pylist() == list(range(100, 200))
    assert decode_png(table.column("image")[5].as_py()["bytes"]).shape == (32, 32, 1)
    # Resume on S3 too: a lost object is regenerated to the same bytes.
    before = storage.read_bytes(out + "/part-00002.parquet")
    storage.delete_file(out + "/part-00002.parquet")
    assert verify_main([out]) == 1
    generate(GenerateArgs(checkpoint=ckpt, out=out, num_samples=300, rows_per_shard=100, workers=2, resume=True),
             log=lambda *_: None)
    assert storage.read_bytes(out + "/part-00002.parquet") == before
    assert verify_main([out]) == 0
    # The S3 secret key is in this process's environment; it must be in no file raygen wrote.
    from conftest import S3_SECRET

    written = storage.list_files("s3://raygen/runs/tiny-s3", recursive=True) + storage.list_files(out, recursive=True)
    assert written and not [uri for uri in written if S3_SECRET.encode() in storage.read_bytes(uri)]


@pytest.mark.slow
def test_two_node_cluster_writes_the_same_bytes(checkpoint, reference, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "two_node_generate.py"), checkpoint, str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nodes: 2" in result.stdout
    assert shard_bytes(tmp_path) == shard_bytes(reference)
    assert problems(str(tmp_path))[0] == []


@pytest.mark.slow
def test_rerun_with_the_same_name_resumes_from_the_latest_checkpoint(checkpoint):
    """`raygen train` again with the same --name (and more epochs) continues where the run stopped."""
    from conftest import run_cli

    storage_dir = str(Path(checkpoint).parents[1])  # STORAGE/tiny/checkpoint_... -> STORAGE
    overrides = [a for item in TINY if item != "train.epochs=1" for a in ("--set", item)]
    result = run_cli("train", "dcgan_digits", "--storage", storage_dir, "--name", "tiny", *overrides, "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "resumed from the run's latest checkpoint at epoch 1" in log
    assert "epoch 2/2" in log and "epoch 1/2" not in log
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"checkpoint: {storage_dir}/tiny/checkpoint_") and last != f"checkpoint: {checkpoint}"
    resumed = Path(last.split(": ", 1)[1])
    assert json.loads((resumed / "raygen.json").read_text())["epoch"] == 2

    # The harness reseeds every epoch from (seed, epoch, rank): the interrupted-and-resumed
    # run ends with the same weights as a run that trained both epochs in one go.
    from gen_jobs.core.checkpoint import load_state
    from gen_jobs.train import train

    straight = Path(train(load_recipe("dcgan_digits", [*TINY[:1], *TINY[2:], "train.epochs=2"]), storage_dir,
                          "tiny-straight", workers=2, gpu=False))
    for stem in ("model", "generator", "discriminator"):
        a, b = load_state(resumed, stem), load_state(straight, stem)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stem
