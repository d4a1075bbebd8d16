"""Counter-based noise: full 64-bit seeds, batch invariance, rows independent of workers and batches."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, read_rows
from gen_jobs.core import seeding
from gen_jobs.core.seeding import row_seeds
from gen_jobs.families.dcgan.sampler import Sampler
from gen_jobs.families.lm.decoding import decode_steps
from gen_jobs.generate import GenerateArgs, plan
from test_verify import write_in_process


def test_mix64_is_splitmix64_on_unsigned_64_bit_words():
    x = np.random.default_rng(0).integers(-2**63, 2**63 - 1, size=10_000, dtype=np.int64)
    u = x.view(np.uint64)
    with np.errstate(over="ignore"):
        y = (u ^ (u >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        y = (y ^ (y >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        y = y ^ (y >> np.uint64(31))
    assert np.array_equal(seeding.mix64(torch.from_numpy(x)).numpy().view(np.uint64), y)


def test_seeds_that_agree_in_their_low_32_bits_give_different_noise():
    seeds = torch.tensor([5, 5 + 2**32, 5 + 2**40, 5 + 2**62])
    latents = seeding.normals(seeds, seeding.LATENT, 64)
    assert len({tuple(row.tolist()) for row in latents}) == 4
    tokens = seeding.uniform32(seeds, seeding.TOKEN, torch.arange(8))
    assert len({tuple(row.tolist()) for row in tokens}) == 4


def test_draws_have_the_right_distributions():
    seeds = seeding.seed_tensor(row_seeds(0, np.arange(4096)))
    z = seeding.normals(seeds, seeding.LATENT, 64)
    assert z.dtype == torch.float32 and abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    u = seeding.uniform32(seeds, seeding.TOKEN, torch.arange(16))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    counts = torch.bincount(seeding.integers(seeds, seeding.LABEL, 10), minlength=10)
    assert counts.min() > 330 and counts.max() < 490  # ~410 each


def test_images_for_seeds_s_and_s_plus_2_to_32_differ(random_checkpoint):
    out = Sampler(random_checkpoint)({"seed": np.array([1629, 1629 + 2**32], dtype=np.int64), "label": np.array([3, 3])})
    assert out["image"][0].tobytes() != out["image"][1].tobytes()


def test_the_reported_seed_1629_dataset_has_no_duplicate_rows(random_checkpoint, tmp_path):
    out = tmp_path / "data"
    planned = plan(GenerateArgs(checkpoint=random_checkpoint, out=str(out), num_samples=1000, seed=1629))
    write_in_process(planned, str(out))
    table = read_rows(out)
    images = [cell["bytes"] for cell in table.column("image").to_pylist()]
    assert len(set(images)) == 1000
    assert len(set(table.column("seed").to_pylist())) == 1000


@pytest.mark.parametrize("neighbours", [7, 64])
def test_a_dcgan_row_alone_equals_the_row_among_other_seeds(random_checkpoint, neighbours):
    sampler = Sampler(random_checkpoint)
    seed = np.array([123456789123], dtype=np.int64)
    alone = sampler({"seed": seed})
    others = row_seeds(99, np.arange(neighbours))
    batch = np.concatenate([others[:3], seed, others[3:]])
    together = sampler({"seed": batch})
    assert together["image"][3].tobytes() == alone["image"][0].tobytes()
    assert together["label"][3] == alone["label"][0]


def test_a_given_label_keeps_the_latent_the_seed_draws(random_checkpoint):
    sampler = Sampler(random_checkpoint)
    seeds = row_seeds(4, np.arange(100))
    drawn = sampler({"seed": seeds})
    threes = seeds[drawn["label"] == 3]
    given = sampler({"seed": threes, "label": np.full(len(threes), 3)})
    assert len(threes) > 3
    assert given["image"].tobytes() == drawn["image"][drawn["label"] == 3].tobytes()


def test_rows_do_not_depend_on_shard_size_or_micro_batch(random_checkpoint, tmp_path):
    tables = []
    for rows_per_shard, batch in [(100, 250), (17, 7), (64, 64)]:
        out = tmp_path / f"{rows_per_shard}-{batch}"
        planned = plan(GenerateArgs(checkpoint=random_checkpoint, out=str(out), num_samples=100,
                                    rows_per_shard=rows_per_shard, seed=5))
        write_in_process(planned, str(out), batch)
        tables.append(read_rows(out).sort_by("id"))
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_shards_written_in_any_order_by_one_worker_equal_fresh_workers(random_checkpoint, tmp_path):
    from gen_jobs.data.shard_writer import ShardWriter

    identity, micro_batch, pinned = plan(GenerateArgs(checkpoint=random_checkpoint, out=str(tmp_path / "a"),
                                                      num_samples=60, rows_per_shard=20))
    busy = ShardWriter(identity.model_dump(mode="json"), str(tmp_path / "a"), micro_batch, "cpu", pinned)
    busy({"shard": np.array([2, 0, 1])})  # one worker, shards out of order
    for k in range(3):  # a fresh worker per shard
        ShardWriter(identity.model_dump(mode="json"), str(tmp_path / "b"), micro_batch, "cpu", pinned)(
            {"shard": np.array([k])})
    for k in range(3):
        name = f"part-{k:05d}.parquet"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_row_made_in_a_fresh_process_equals_the_same_row_made_after_other_work(random_checkpoint):
    script = (
        "import hashlib, sys, numpy as np\n"
        "from gen_jobs.families.dcgan.sampler import Sampler\n"
        "out = Sampler(sys.argv[1])({'seed': np.array([987654321987], dtype=np.int64)})\n"
        "print(hashlib.sha256(out['image'].tobytes()).hexdigest(), int(out['label'][0]))\n"
    )
    fresh = subprocess.run([sys.executable, "-c", script, random_checkpoint], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    sampler = Sampler(random_checkpoint)
    for k in range(5):  # other work first: other batches, other sizes
        sampler({"seed": row_seeds(k, np.arange(37 * (k + 1)))})
    here = sampler({"seed": np.array([987654321987], dtype=np.int64)})
    assert [hashlib.sha256(here["image"].tobytes()).hexdigest(), str(int(here["label"][0]))] == fresh


def test_text_decoding_draws_its_uniforms_from_the_row_seed():
    """A stand-in causal LM whose logits ignore the input: the picked tokens are then exactly the
    inverse-CDF draws of seeding.uniform32(seed, TOKEN, step), whatever the batch."""

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep):
            b = input_ids.shape[0]
            return type("Out", (), {"logits": torch.zeros(b, 1, 10), "cache": None})()

    settings = {"max_new_tokens": [6], "temperature": [1.0], "top_k": [0], "top_p": [1.0], "stop": [[]]}
    seed = 2**40 + 7
    rows = list(decode_steps(Flat(), [[0]], np.array([seed]), settings, eos=99, pad=0, stream=seeding.TOKEN))[-1]
    expected = (seeding.uniform32(torch.tensor([seed]), seeding.TOKEN, torch.arange(6))[0] * 10).floor().long().tolist()
    assert rows[0].tokens == expected
    batch = {k: v * 3 for k, v in settings.items()}
    together = list(decode_steps(Flat(), [[0], [0, 5], [0]], np.array([1, seed, 2]), batch, eos=99, pad=0,
                                 stream=seeding.TOKEN))[-1]
    assert together[1].tokens == expected


@pytest.mark.slow  # starts Ray, a process or a training of its own: not in `make check`
def test_resume_refuses_a_dataset_made_on_another_device_or_noise(random_checkpoint, tmp_path):
    from conftest import run_cli

    out = tmp_path / "data"
    planned = plan(GenerateArgs(checkpoint=random_checkpoint, out=str(out), num_samples=20, rows_per_shard=10))
    write_in_process(planned, str(out))
    identity = planned.identity
    pending = identity.model_copy(update={"device_kind": "cuda"})
    (out / "_pending.json").write_text(pending.model_dump_json())
    args = ["generate", "--checkpoint", random_checkpoint, "--out", str(out), "--num-samples", "20", "--rows-per-shard", "10"]
    result = run_cli(*args, "--resume")
    assert result.returncode == 2 and "made on cuda, resuming on cpu" in result.stderr
    (out / "_pending.json").write_text(identity.model_copy(update={"noise_version": "torch-mt19937"}).model_dump_json())
    result = run_cli(*args, "--resume")
    assert result.returncode == 2 and "noise version (made with torch-mt19937" in result.stderr
    assert json.loads((out / "_pending.json").read_text())["noise_version"] == "torch-mt19937"  # left as it was
