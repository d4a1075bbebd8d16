"""Diffusion family: the U-Net and its schedules, the denoising step, and rows that are pure functions of
(checkpoint, recipe, seed) whatever the batch, the chunk or the scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen_jobs.core.recipes import load_recipe
from gen_jobs.core.row_seed import row_seeds
from gen_jobs.families.diffusion.model import ModelConfig, build_unet
from gen_jobs.families.diffusion.sampler import Sampler, to_table
from gen_jobs.families.diffusion.training import TrainingTask
from gen_jobs.training.harness import Workers

# A few denoising steps of a 16x16 U-Net: what the tests need to see rows, not digits.
TINY_DIFFUSION = ["model.block_channels=[8, 16]", "train.epochs=1", "train.quality_samples=0", "sampling.steps=4",
                  "sampling.chunk=8", "generate.batch_size=64"]


def train_in_process(recipe, steps: int) -> tuple[TrainingTask, list[float]]:
    """A TrainingTask on one worker outside Ray Train, `steps` steps of the recipe's batch size."""
    torch.manual_seed(recipe.train.seed)
    task = TrainingTask(recipe, TrainingTask.prepare(recipe), Workers(0, 1, torch.device("cpu")))
    losses = [task.train_step(torch.randint(task.num_examples, (recipe.train.batch_size,)))["loss"]
              for _ in range(steps)]
    return task, losses


def checkpoint_of(tmp_path, overrides: list[str], steps: int = 2) -> str:
    """A briefly trained checkpoint of the tiny recipe with `overrides`, in tmp_path/diffusion."""
    task, _ = train_in_process(load_recipe("diffusion_digits", TINY_DIFFUSION + overrides), steps)
    folder = tmp_path / "diffusion"
    task.save(folder, {"epoch": 1})
    return str(folder)


@pytest.mark.parametrize("size, channels, blocks, attention", [(16, 1, [8, 16], False), (32, 3, [8, 16, 16], True)])
def test_the_unet_maps_noise_to_its_own_shape(size, channels, blocks, attention):
    cfg = ModelConfig(image_size=size, channels=channels, block_channels=blocks, attention=attention)
    unet = build_unet(cfg)
    x = torch.randn(3, channels, size, size)
    out = unet(x, torch.tensor([0, 500, 999]), class_labels=torch.tensor([0, 9, 10])).sample  # 10: "no label"
    assert out.shape == x.shape


@pytest.mark.parametrize("override, says", [
    (["model.block_channels=[12, 24]"], "norm_groups 8 must divide every block_channels entry"),
    (["sampling.eta=0.5"], "sampling.eta applies to DDIM only"),
    (["model.num_classes=5"], "sklearn:digits has 10 classes"),
])
def test_a_recipe_that_cannot_work_says_what_to_change(override, says):
    with pytest.raises(Exception, match=says):
        load_recipe("diffusion_digits", override)


def test_training_lowers_the_denoising_loss():
    _, losses = train_in_process(load_recipe("diffusion_digits", TINY_DIFFUSION), 60)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_the_unet_sees_a_row_in_calls_of_one_size_so_its_numbers_never_depend_on_the_batch():
    from gen_jobs.families.diffusion.sampler import _denoise

    torch.manual_seed(0)
    unet = build_unet(ModelConfig()).eval()  # the recipe's U-Net: CPU kernels sum its rows differently by batch size
    x, t, labels = torch.randn(19, 1, 16, 16), torch.tensor(500), torch.arange(19) % 11
    with torch.inference_mode():
        unpadded = unet(x[:3], t, class_labels=labels[:3]).sample
        together = _denoise(unet, x, t, labels, chunk=8)
        assert not torch.equal(unpadded, unet(x, t, class_labels=labels).sample[:3])  # why rows go in fixed chunks
        for start, size in ((0, 1), (4, 3), (16, 3)):
            alone = _denoise(unet, x[start: start + size], t, labels[start: start + size], chunk=8)
            assert torch.equal(alone, together[start: start + size])


@pytest.mark.parametrize("overrides", [
    [],  # DPM-Solver++ with guidance: two U-Net branches a step
    ["sampling.guidance_scale=1.0"],  # the conditional branch alone
    ["sampling.scheduler=ddim", "sampling.eta=1.0"],  # DDIM drawing fresh noise each step, from the row's seed
])
def test_a_row_is_the_same_alone_or_in_any_batch(tmp_path, overrides):
    sampler = Sampler(checkpoint_of(tmp_path, overrides))
    ids = np.arange(19, dtype=np.int64)  # two full chunks of 8 and a padded one
    batch = {"id": ids, "seed": row_seeds(3, ids)}
    together = sampler(batch)
    for size in (1, 3, 7):
        for start in range(0, 19, size * 2):
            part = sampler({"id": ids[start: start + size], "seed": batch["seed"][start: start + size]})
            for k in range(len(part["id"])):
                assert part["label"][k] == together["label"][start + k]
                assert part["image"][k].tobytes() == together["image"][start + k].tobytes(), (size, start + k)


def test_labels_are_given_or_drawn_from_the_seed_and_steer_the_image(diffusion_checkpoint):
    sampler = Sampler(diffusion_checkpoint)
    seeds = row_seeds(0, np.arange(100, dtype=np.int64))
    drawn = sampler({"seed": seeds})
    assert set(drawn["label"]) == set(range(10))
    assert len({image.tobytes() for image in drawn["image"]}) == 100  # every seed its own image
    fixed = sampler({"seed": seeds[:5], "label": np.full(5, 4)})
    assert (fixed["label"] == 4).all()
    assert fixed["image"].shape == (5, 16, 16, 1) and fixed["image"].dtype == np.uint8
    other = sampler({"seed": seeds[:5], "label": np.full(5, 7)})
    assert all(a.tobytes() != b.tobytes() for a, b in zip(fixed["image"], other["image"]))  # same noise, new label


def test_a_row_stopped_between_steps_gets_no_more_unet_calls_and_the_others_do_not_change(diffusion_checkpoint):
    """What Serve does when a client leaves: its rows' finish_reason is set between steps (serving.model_server)."""
    sampler = Sampler(diffusion_checkpoint)
    ids = np.arange(5, dtype=np.int64)
    batch = {"id": ids, "seed": row_seeds(0, ids)}
    whole = sampler(batch)
    calls = []
    hook = sampler.unet.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:
        steps = sampler.stream(batch)
        rows = next(steps)  # after the first step: 5 rows, guided, are 10 U-Net rows, two calls of 8
        assert calls == [8, 8]
        for row in rows[1:4]:
            row.finish_reason = "cancelled"
        for rows in steps:
            pass
    finally:
        hook.remove()
    steps_left = sampler.recipe.sampling.steps - 1
    assert calls[2:] == [8] * steps_left  # 2 rows left, 4 U-Net rows: one padded call a step
    out = sampler.output(batch, rows)
    assert np.array_equal(out["image"][[0, 4]], whole["image"][[0, 4]])  # the others' bytes are unchanged
    assert [row.finish_reason for row in rows] == ["stop", "cancelled", "cancelled", "cancelled", "stop"]
    assert list(out["label"]) == list(whole["label"])


def test_a_saved_model_samples_as_it_did_before_saving(tmp_path):
    recipe = load_recipe("diffusion_digits", TINY_DIFFUSION)
    task, _ = train_in_process(recipe, 3)
    task.save(tmp_path / "ckpt", {"epoch": 1})
    ids = np.arange(5, dtype=np.int64)
    from gen_jobs.families.diffusion.sampler import sample_images

    before, _ = sample_images(task.model.ema, recipe, row_seeds(0, ids), None, torch.device("cpu"))
    after = Sampler(str(tmp_path / "ckpt"))({"id": ids, "seed": row_seeds(0, ids)})["image"]
    assert np.array_equal(before, after)


def test_the_table_holds_the_digits_figures_and_a_png_per_row(diffusion_checkpoint):
    sampler = Sampler(diffusion_checkpoint)
    ids = np.arange(6, dtype=np.int64)
    table = to_table(sampler({"id": ids, "seed": row_seeds(0, ids)}), sampler.recipe)
    assert table.column_names == ["id", "seed", "label", "confidence", "train_distance", "train_distance_pixels",
                                  "copy", "image"]
    assert table.column("image").to_pylist()[0]["bytes"].startswith(b"\x89PNG")


# ---------------------------------------------------------------- on the session's Ray cluster


@pytest.fixture(scope="module")
def ray_trained(ray_cluster, tmp_path_factory) -> str:
    """The tiny recipe trained for one epoch on 2 Ray Train workers (the shared harness; gradients all-reduced)."""
    from gen_jobs.train import train

    recipe = load_recipe("diffusion_digits", TINY_DIFFUSION + ["train.quality_samples=50"])
    return train(recipe, str(tmp_path_factory.mktemp("runs")), "diffusion", workers=2, gpu=False)


def test_ray_train_then_generate_gives_the_same_bytes_with_one_or_two_workers_and_after_a_resume(ray_trained, tmp_path):
    import json
    from pathlib import Path

    from gen_jobs.generate import GenerateArgs, generate
    from gen_jobs.verify import problems

    info = json.loads((Path(ray_trained) / "raygen.json").read_text())
    assert info["family"] == "diffusion" and info["epoch"] == 1
    assert {"loss", "classes_covered", "label_agreement"} <= set(info["metrics"])  # the EMA model's digits, scored

    def run(out: Path, workers: int, **kw) -> dict[str, bytes]:
        generate(GenerateArgs(checkpoint=ray_trained, out=str(out), num_samples=96, rows_per_shard=32,
                              workers=workers, **kw), log=lambda *_: None)
        assert problems(str(out))[0] == []
        return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}

    two = run(tmp_path / "two", workers=2)
    assert len(two) == 3 and run(tmp_path / "one", workers=1) == two
    (tmp_path / "two" / "part-00001.parquet").unlink()
    assert run(tmp_path / "two", workers=2, resume=True) == two

    import pyarrow.parquet as pq

    shard = pq.read_table(tmp_path / "two" / "part-00002.parquet")  # rows 64-95, as the sampler makes them alone
    sampler = Sampler(ray_trained)
    ids = np.arange(64, 96, dtype=np.int64)
    direct = to_table(sampler({"id": ids, "seed": row_seeds(0, ids)}), sampler.recipe)
    assert shard.column("image").to_pylist() == direct.column("image").to_pylist()


def test_the_demo_runs_diffusion_only_when_named():
    from conftest import run_cli

    helped = run_cli("demo", "--help")
    assert helped.returncode == 0
    assert "(default: dcgan, gpt, music, style, one after the other; diffusion only when named)" in \
        " ".join(helped.stdout.split())


def test_raygen_demo_family_diffusion_trains_generates_verifies_and_draws_its_grid(ray_cluster, tmp_path):
    """`raygen demo --family diffusion` from a fresh folder, as a user runs it, shortened (1 epoch, 200 rows)."""
    import re

    from conftest import run_cli
    from gen_jobs.verify import problems

    done = run_cli("demo", "--family", "diffusion", "--num-samples", "200", "--set", "train.epochs=1",
                   cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[diffusion 1/3] training diffusion_digits on 2 Ray Train workers (1 epochs)" in done.stdout
    folder = tmp_path / re.search(r"everything is under (\S+)", done.stdout).group(1)
    assert (folder / "diffusion_digits_grid.png").is_file()
    assert problems(str(folder / "diffusion_digits"))[0] == []
