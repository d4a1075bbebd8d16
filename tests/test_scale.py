"""A dataset of 100,000 shards: resuming it complete and verifying it take time proportional to
shards (one listing, the manifest), not bytes.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_scale.py -s     # prints the figures

The shards are tiny stand-in files of the size the manifest records (what a listing
sees of real ones); the manifest is the one `raygen generate` would write for them,
built from the identity `plan` makes for the same arguments, so `--resume` accepts it.
Nothing here reads a shard: a test that read them would fail on the stand-ins.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gen_jobs.generate import GenerateArgs, generate, plan
from gen_jobs.manifest import Manifest, ShardEntry, shard_name
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
    identity, _ = plan(args, log=lambda _: None)
    planned = time.perf_counter() - started
    out.mkdir(parents=True)
    stand_in = b"x" * SHARD_BYTES
    entries = []
    for k in range(NUM_SHARDS):
        (out / shard_name(k)).write_bytes(stand_in)
        entries.append(ShardEntry(file=shard_name(k), first_id=k * ROWS_PER_SHARD, rows=ROWS_PER_SHARD,
                                  sha256="0" * 64, bytes=SHARD_BYTES))
    manifest = Manifest(**identity.model_dump(), shards=entries, schema_={"fields": []})
    (out / "_manifest.json").write_bytes(manifest.to_json())
    return args, planned


@pytest.fixture(scope="module")
def random_checkpoint_module(tmp_path_factory) -> str:
    import torch

    from conftest import TINY
    from gen_jobs.families.dcgan.training import GAN
    from gen_jobs.recipes import load_recipe

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
    (Path(args.out) / shard_name(NUM_SHARDS // 2)).write_bytes(b"short")  # one replaced by a file of another size
    bad, _ = problems(args.out, deep=False)
    assert bad == [f"{shard_name(NUM_SHARDS // 2)}: 5 bytes, manifest says 48 (truncated, replaced or modified)"]
