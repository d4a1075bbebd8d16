"""Datasets named by relative paths, as people type them: generate, verify, quality, resume, overwrite, spread keys, inputs.

Every command runs as the `raygen` console script from a working directory outside the
repository, and names its folders as a user would (`d`, `./d/`, `../work/d`, `~/d`).
"""

import os
from pathlib import Path

import pytest

from conftest import run_cli
from test_style import photo_folder

pytestmark = pytest.mark.slow


def ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture()
def work(tmp_path) -> Path:
    """The user's working directory (not the repository), with HOME beside it for `~` paths."""
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    return tmp_path / "work"


def test_a_dataset_named_by_relative_paths_verifies_resumes_and_overwrites(ray_cluster, checkpoint, work):
    ckpt = os.path.relpath(checkpoint, work)  # ../../runs.../checkpoint_...: a `..` path
    generate = ["generate", "--checkpoint", ckpt, "--num-samples", "60", "--rows-per-shard", "20", "--workers", "1"]
    said = ok(run_cli(*generate, "--out", "./d/", cwd=work))
    assert "wrote 60 rows in 3 shards to ./d/ in" in said, said

    # verify, as typed: the message names the folder as the user wrote it
    for typed in ["d", "./d/", "../work/d"]:
        assert ok(run_cli("verify", typed, cwd=work)).startswith(f"OK {typed}: 3 shards, 60 rows")
    assert "checksums, tags, ids and seeds match" in ok(run_cli("verify", "d/", "--deep", cwd=work))
    quality = run_cli("quality", "./d", cwd=work)  # exit 1: this one-epoch model's warnings are true
    assert "scoring the first 60 of" in quality.stdout and "dataset card: d/README.md" in quality.stdout, quality

    # --resume after a removed shard writes only that shard again, byte for byte
    shard = work / "d" / "part-00001.parquet"
    before = shard.read_bytes()
    shard.unlink()
    said = ok(run_cli(*generate, "--out", "d", "--resume", cwd=work))
    assert "resuming: 2 of 3 shards already done, 1 to write" in said
    assert shard.read_bytes() == before

    # --overwrite of a folder named with a trailing slash replaces raygen's own files and nothing else
    (work / "d" / "notes.txt").write_text("mine")
    refused = run_cli(*generate, "--out", "d/", "--overwrite", cwd=work)
    assert refused.returncode != 0 and "notes.txt" in refused.stderr
    (work / "d" / "notes.txt").unlink()
    ok(run_cli(*generate, "--out", "d/", "--overwrite", "--seed", "5", cwd=work))
    assert shard.read_bytes() != before and ok(run_cli("verify", "d", cwd=work)).startswith("OK d:")


def test_spread_keys_and_home_relative_paths(ray_cluster, checkpoint, work):
    env = {"HOME": str(work.parent / "home")}
    generate = ["generate", "--checkpoint", checkpoint, "--num-samples", "40", "--rows-per-shard", "20",
                "--workers", "1", "--no-card"]
    ok(run_cli(*generate, "--out", "s", "--spread-keys", cwd=work))
    assert (work / "s" / "01" / "part-00001.parquet").is_file()
    assert ok(run_cli("verify", "./s/", "--deep", cwd=work)).startswith("OK ./s/: 2 shards, 40 rows")
    (work / "s" / "00" / "part-00000.parquet").unlink()
    assert "resuming: 1 of 2 shards already done" in ok(run_cli(*generate, "--out", "s/", "--spread-keys", "--resume", cwd=work))

    ok(run_cli(*generate, "--out", "~/h", env=env, cwd=work))  # raygen expands ~ itself (no shell here)
    assert (work.parent / "home" / "h" / "_manifest.json").is_file()
    assert ok(run_cli("verify", "~/h/", env=env, cwd=work)).startswith("OK ~/h/: 2 shards")


def test_an_input_folder_named_relatively(ray_cluster, style_checkpoint, work):
    photo_folder(work / "photos" / "set", count=2)
    ckpt = os.path.relpath(style_checkpoint, work)
    ok(run_cli("generate", "--checkpoint", ckpt, "--input", "photos/", "--out", "st", "--styles", "0",
               "--workers", "1", "--no-card", cwd=work))
    sources = sorted(p.name for p in (work / "st").glob("part-*.parquet"))
    assert sources and ok(run_cli("verify", "st", "--deep", cwd=work)).startswith("OK st: ")
    import pyarrow.parquet as pq

    rows = pq.read_table(work / "st" / sources[0]).column("source").to_pylist()
    # each row names its input file by a path any worker can open
    assert all(os.path.isabs(r) and Path(r).is_file() for r in rows) and len(rows) == 2
    # resume from another directory, naming the same input by another relative path
    said = ok(run_cli("generate", "--checkpoint", style_checkpoint, "--input", "../photos", "--out", "../st",
                      "--styles", "0", "--workers", "1", "--no-card", "--resume", cwd=work / "photos"))
    assert "nothing to do" in said
