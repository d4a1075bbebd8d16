"""DCGAN family: shapes, stabilisers, sampler determinism and the dataset table layout."""

import io
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gen_jobs.core.recipes import load_recipe
from gen_jobs.core.seeding import row_seeds
from gen_jobs.families.dcgan.model import Discriminator, Generator, ModelConfig
from gen_jobs.families.dcgan.sampler import Sampler, to_table
from gen_jobs.families.dcgan.training import GAN, diff_augment


@pytest.mark.parametrize("size, channels, conditional", [(16, 1, True), (32, 1, True), (64, 3, False), (32, 3, True)])
def test_generator_and_discriminator_shapes(size, channels, conditional):
    cfg = ModelConfig(image_size=size, channels=channels, width=8, latent_dim=16, conditional=conditional)
    G, D = Generator(cfg), Discriminator(cfg)
    labels = torch.tensor([0, 3, 9]) if conditional else None
    images = G(torch.randn(3, 16), labels)
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert D(images, labels).shape == (3,)


def test_diff_augment_keeps_shape_and_changes_pixels():
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    for policy in (["translation"], ["cutout"], ["color"], ["translation", "cutout", "color"]):
        y = diff_augment(x, policy)
        assert y.shape == x.shape
        assert not torch.equal(x, y)


def test_spectral_norm_switch():
    recipe = load_recipe("dcgan_digits", ["model.width=8"])
    with_sn = GAN(recipe, torch.device("cpu")).D
    without = GAN(load_recipe("dcgan_digits", ["model.width=8", "train.spectral_norm=false"]), torch.device("cpu")).D
    assert any("parametrizations" in k for k in with_sn.state_dict())
    assert not any("parametrizations" in k for k in without.state_dict())


def test_train_step_updates_g_d_and_ema():
    recipe = load_recipe("dcgan_digits", ["model.width=8", "train.epochs=1"])
    gan = GAN(recipe, torch.device("cpu"))
    models = {"G": gan.G, "D": gan.D, "G_ema": gan.G_ema}
    before = {name: [p.clone() for p in m.parameters()] for name, m in models.items()}
    loss_d, loss_g = gan.train_step(torch.rand(8, 1, 32, 32) * 2 - 1, torch.arange(8) % 10)
    assert np.isfinite([loss_d, loss_g]).all()
    for name, m in models.items():
        changed = [not torch.equal(a, b) for a, b in zip(before[name], m.parameters())]
        assert sum(changed) >= len(changed) - 1, name  # D's head bias may have a zero hinge gradient


def test_sampler_row_is_the_same_alone_or_in_a_batch(random_checkpoint):
    sampler = Sampler(random_checkpoint)
    ids = np.arange(40, dtype=np.int64)
    batch = {"id": ids, "seed": row_seeds(7, ids)}
    together = sampler(batch)
    for i in range(0, 40, 3):
        alone = sampler({"id": ids[i: i + 1], "seed": batch["seed"][i: i + 1]})
        assert alone["label"][0] == together["label"][i]
        assert alone["image"][0].tobytes() == together["image"][i].tobytes()


def test_sampler_labels_given_or_drawn_from_the_seed(random_checkpoint):
    sampler = Sampler(random_checkpoint)
    seeds = row_seeds(0, np.arange(200, dtype=np.int64))
    drawn = sampler({"seed": seeds})["label"]
    assert set(drawn) == set(range(10))  # uniform over classes
    # a function of the seed alone: the same seeds in another order and batch split draw the same labels
    reordered = np.concatenate([sampler({"seed": seeds[::-1][i: i + 13]})["label"] for i in range(0, 200, 13)])
    assert np.array_equal(reordered[::-1], drawn)
    fixed = sampler({"seed": seeds[:5], "label": np.full(5, 4)})
    assert (fixed["label"] == 4).all()
    assert fixed["image"].shape == (5, 32, 32, 1) and fixed["image"].dtype == np.uint8


def test_table_is_decoded_by_huggingface_datasets(random_checkpoint, tmp_path):
    import datasets

    sampler = Sampler(random_checkpoint)
    ids = np.arange(6, dtype=np.int64)
    table = to_table(sampler({"id": ids, "seed": row_seeds(0, ids)}), sampler.recipe)
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path)
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["image"].size == (32, 32)
    assert ds["id"] == list(range(6))
    assert pq.read_schema(io.BytesIO(path.read_bytes())).field("image").type.names == ["bytes", "path"]


def test_collapse_warnings_know_how_many_rows_they_rest_on():
    from gen_jobs.data.digit_sets import bundled_digits
    from gen_jobs.data.images import resize_uint8
    from gen_jobs.quality.digits import DigitsReference
    from gen_jobs.quality.significance import coverage_tail

    raw, labels = bundled_digits()
    images = resize_uint8(raw, 32)  # real digits, as a perfect generator would draw them
    reference = DigitsReference()
    five = np.isin(labels, [0, 1, 2, 3, 4])
    # 10 rows showing 5 classes: a healthy uniform generator does that 15% of the time, so no alarm ...
    few = reference.score(images[five][:10], tstr=False)
    assert few.classes_covered <= 6 and few.warnings() == []
    assert coverage_tail(10, 5, 10) == pytest.approx(0.146, abs=0.001)
    # ... but 500 rows of 5 classes are collapse, and the warning says what it rests on.
    many = reference.score(images[five][:500], tstr=False)
    assert many.warnings()[0] == f"mode collapse: only {many.classes_covered} of 10 classes appear in 500 rows"
    # Rows that asked for one class (--labels 3) are not a collapse for showing one class.
    threes = reference.score(images[labels == 3][:100], labels=np.full(100, 3), tstr=False)
    assert threes.requested_classes == 1 and not any("collapse" in w for w in threes.warnings())
    # Label agreement below 0.9: 3 rows of 4 say little; 400 rows with a quarter wrong say a lot.
    wrong = np.full(4, 3)
    wrong[0] = 5
    assert reference.score(images[labels == 3][:4], labels=wrong, tstr=False).warnings() == []
    mislabelled = np.full(400, 3)
    mislabelled[:100] = 5
    threes_400 = np.concatenate([images[labels == 3]] * 3)[:400]  # (183 real threes, repeated)
    warned = reference.score(threes_400, labels=mislabelled, tstr=False).warnings()
    assert any(w.startswith("samples often miss their label") and w.endswith("in 400 rows") for w in warned)


def test_coverage_is_judged_against_as_many_real_digits_of_the_classes_asked_for():
    from gen_jobs.data.digit_sets import bundled_digits
    from gen_jobs.data.images import resize_uint8
    from gen_jobs.quality.digits import DigitsReference

    raw, labels = bundled_digits()
    images = resize_uint8(raw, 32)
    reference = DigitsReference()
    pool = reference.pool_rows  # real digits the figures' reference half has not seen: a healthy generator
    collapse = [w for w in reference.score(images[pool][:600], tstr=True).warnings() if "neighbourhoods" in w]
    assert collapse == []
    small = reference.score(images[pool][:100], tstr=True)
    assert small.coverage < 0.5 and small.coverage_expected < 0.5  # coverage at 100 rows is low for real digits too
    assert not any("neighbourhoods" in w for w in small.warnings())
    # A generator that draws one class (unconditional) does collapse, and the warning says against what
    threes = images[labels == 3]
    stuck = reference.score(np.concatenate([threes, threes])[:300], tstr=True)
    warned = [w for w in stuck.warnings() if "neighbourhoods" in w]
    assert warned and f"where as many real digits cover {stuck.coverage_expected:.0%}" in warned[0]
    # ... while rows that asked for threes (--labels 3) are compared with the real threes only
    asked = reference.score(threes[:150], labels=np.full(150, 3), tstr=True)
    assert asked.coverage > 0.5 and not any("neighbourhoods" in w for w in asked.warnings())


@pytest.mark.slow  # starts Ray, a process or a training of its own: not in `make check`
def test_row_confidence_is_the_reference_classifiers_without_importing_scikit_learn(tmp_path):
    """A sampler actor scores its rows from cached weights: the same numbers, over a second sooner."""
    script = """
import sys, numpy as np
from gen_jobs.data.digit_sets import bundled_digits
from gen_jobs.quality.digits import digits_confidence
from gen_jobs.data.images import resize_uint8
images = resize_uint8(bundled_digits()[0], 32)
np.save(sys.argv[1], digits_confidence(images, None, 32))
print("sklearn" in sys.modules)
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{i}.npy")], env=env, capture_output=True,
                           text=True, check=True) for i in range(2)]
    assert [r.stdout.strip() for r in runs] == ["True", "False"]  # fitted once, then loaded from the cache

    from gen_jobs.data.digit_sets import bundled_digits
    from gen_jobs.data.images import resize_uint8
    from gen_jobs.quality.digits import DigitsReference, digit_features

    images = resize_uint8(bundled_digits()[0], 32)
    expected = np.round(DigitsReference(32).model.predict_proba(digit_features(images)).max(axis=1), 4)
    assert np.array_equal(np.load(tmp_path / "0.npy"), expected) and np.array_equal(np.load(tmp_path / "1.npy"), expected)
