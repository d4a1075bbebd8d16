"""The dataset card and `raygen quality`: figures a person can read, pictures that exist, YAML the Hub reads;
and reports that tell a healthy dataset from a broken one (single-class, noise, degenerate text)."""

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import REPO
from gen_jobs.core import checkpoint as ckpt, storage
from gen_jobs.data.card_record import CARD_RECORD, README
from gen_jobs.generate import GenerateArgs, generate
from gen_jobs.quality_report import QualityArgs, quality_report
from test_cli_errors import error_of
from test_verify import make_dataset


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n"), readme[:200]
    return yaml.safe_load(readme.split("---\n", 2)[1])


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every pixel: a truncated file fails here
    return image.size


def test_generate_writes_a_card_that_the_hub_and_datasets_read(checkpoint, tmp_path):
    import datasets

    out = tmp_path / "digits"
    generate(GenerateArgs(checkpoint=checkpoint, out=str(out), num_samples=300, rows_per_shard=100, workers=1),
             log=lambda *_: None)
    readme = (out / README).read_text()
    meta = front_matter(readme)
    shard_features = json.loads(pq.read_schema(out / "part-00000.parquet").metadata[b"huggingface"])["info"]["features"]
    assert datasets.Features._from_yaml_list(meta["dataset_info"]["features"]) == datasets.Features.from_dict(shard_features)
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 300
    assert meta["configs"][0]["data_files"][0]["path"] == "part-*.parquet"
    loaded = datasets.load_dataset("parquet", data_files=str(out / meta["configs"][0]["data_files"][0]["path"]),
                                   split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert len(loaded) == 300 and loaded.features["image"] == datasets.Image()

    # the pictures it links exist and decode; the training curves come from the checkpoint's every epoch
    for name in ("card-samples.png", "card-training.png"):
        assert f"]({name})" in readme
        width, height = png_size((out / name).read_bytes())
        assert width >= 300 and height >= 200, (name, width, height)
    history = ckpt.training_history(ckpt.latest(checkpoint))
    assert [m["epoch"] for m in history] == [1] and "loss_d" in history[0]

    # figures with their meaning, provenance with the command that makes the same bytes
    quality = json.loads((out / "quality.json").read_text())
    assert f"| `classes_covered` | {quality['classes_covered']} | classes the reference classifier" in readme
    assert "| `precision` |" in readme and "Naeem" in readme
    assert ckpt.latest(checkpoint) in readme
    assert f"`raygen generate --out {out} --checkpoint {checkpoint} --num-samples 300 --rows-per-shard 100`" in readme
    health = readme.split("## Health", 1)[1].split("##", 1)[0]
    assert ("**Healthy**" in health) == (not quality["warnings"])
    for warning in quality["warnings"]:
        assert warning in health


@pytest.mark.slow  # starts Ray, a process or a training of its own: not in `make check`
def test_no_card_writes_none_and_overwrite_replaces_raygens_card_but_never_an_edited_one(capsys, random_checkpoint,
                                                                                          tmp_path):
    from gen_jobs.cli import main as raygen

    out = tmp_path / "data"
    args = ["generate", "--checkpoint", random_checkpoint, "--out", str(out), "--num-samples", "40",
            "--rows-per-shard", "20"]
    assert raygen([*args, "--no-card"]) == 0
    assert not (out / README).exists() and not (out / "quality.json").exists()
    assert raygen([*args, "--overwrite"]) == 0
    assert (out / README).exists() and (out / CARD_RECORD).exists()
    assert raygen([*args, "--overwrite"]) == 0  # its own card is raygen's to replace
    (out / README).write_text((out / README).read_text() + "\nOur team's notes on this dataset.\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = error_of(capsys, [*args, "--overwrite"])
    assert "README.md (edited since raygen wrote it)" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert raygen(["quality", str(out)]) == 2  # nor does raygen quality write over it
    assert "is not the card raygen wrote" in capsys.readouterr().err
    assert (out / README).read_text().endswith("Our team's notes on this dataset.\n")


def test_raygen_quality_on_an_s3_dataset_writes_the_card_there(s3_server, random_checkpoint):
    out = "s3://raygen/card/data"
    make_dataset(random_checkpoint, out, num_samples=60, rows_per_shard=30)  # a dataset without a card
    assert not storage.exists(storage.join(out, README))
    quality = quality_report(QualityArgs(uri=out, rows=50), log=lambda *_: None)
    assert quality["num_samples"] == 50
    assert json.loads(storage.read_bytes(storage.join(out, "quality.json"))) == quality
    readme = storage.read_bytes(storage.join(out, README)).decode()
    assert front_matter(readme)["dataset_info"]["splits"][0]["num_examples"] == 60
    png_size(storage.read_bytes(storage.join(out, "card-samples.png")))
    assert not storage.exists(storage.join(out, "card-training.png"))  # an untrained checkpoint has no curves


@pytest.mark.slow  # starts Ray, a process or a training of its own: not in `make check`
def test_raygen_quality_exit_code_says_whether_a_figure_warns(random_checkpoint, tmp_path):
    """An untrained generator's digits are noise: the command says so and exits 1 (a script can gate on it)."""
    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out), num_samples=300, rows_per_shard=100)
    run = subprocess.run([sys.executable, "-m", "gen_jobs.cli", "quality", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "warning: samples unlike real digits: precision" in run.stdout
    readme = (out / README).read_text()
    assert "**1 warning" in readme or "warnings**" in readme


# ---------------------------------------------------------------- good against bad, figure by figure

@pytest.fixture(scope="module")
def digit_reports():
    """Reports on held-out real digits (what a perfect generator makes), one class only, and noise."""
    from gen_jobs.data.digit_sets import bundled_digits
    from gen_jobs.data.images import resize_uint8
    from gen_jobs.quality.digits import DigitsReference

    raw, labels = bundled_digits()
    images = resize_uint8(raw, 32)
    rng = np.random.default_rng(0)
    held_out = rng.permutation(len(images))[:600]
    threes = np.flatnonzero(labels == 3)
    noise = rng.integers(0, 256, size=(600, 32, 32, 1), dtype=np.uint8)
    reference = DigitsReference(32)
    return {
        "good": reference.score(images[held_out], labels[held_out]).model_dump(),
        "single class": reference.score(images[threes]).model_dump(),  # a generator stuck on one class, unasked
        "noise": reference.score(noise).model_dump(),
        "good warnings": reference.score(images[held_out], labels[held_out]).warnings(),
        "bad warnings": reference.score(images[threes]).warnings() + reference.score(noise).warnings(),
    }


@pytest.mark.parametrize("figure, better", [
    ("classes_covered", "higher"), ("kl_to_uniform", "lower"), ("diversity", "higher"), ("recall", "higher"),
    ("coverage", "higher"), ("frechet_random_conv", "lower"),
])
def test_each_image_figure_tells_real_digits_from_one_class(digit_reports, figure, better):
    good, bad = digit_reports["good"][figure], digit_reports["single class"][figure]
    assert (good > bad) if better == "higher" else (good < bad), (figure, good, bad)


@pytest.mark.parametrize("figure, better", [
    ("classes_covered", "higher"), ("kl_to_uniform", "lower"), ("mean_confidence", "higher"), ("precision", "higher"),
    ("recall", "higher"), ("density", "higher"), ("coverage", "higher"), ("frechet_random_conv", "lower"),
])
def test_each_image_figure_tells_real_digits_from_noise(digit_reports, figure, better):
    good, bad = digit_reports["good"][figure], digit_reports["noise"][figure]
    assert (good > bad) if better == "higher" else (good < bad), (figure, good, bad)


def test_image_warnings_fire_on_the_bad_sets_only(digit_reports):
    assert digit_reports["good warnings"] == []
    bad = " ".join(digit_reports["bad warnings"])
    assert "mode collapse: only" in bad and "samples unlike real digits: precision" in bad and "cover 0%" in bad


def test_the_tstr_figure_tells_real_digits_from_one_class(digit_reports):
    assert digit_reports["good"]["tstr_ratio"] > 0.9
    assert digit_reports["single class"].get("tstr_ratio") is None  # one class cannot train a 10-class classifier


def test_each_text_figure_tells_real_text_from_loops_and_word_salad():
    from gen_jobs.families.gpt.data import TextDataConfig, load_documents
    from gen_jobs.families.gpt.quality import corpus_pieces, score_texts

    corpus = load_documents(TextDataConfig())
    real = [" ".join(words) for words in corpus_pieces(corpus, 120, 60)]  # the corpus, cut like samples
    loops = ["the value of the the value of the " * 8 for _ in range(120)]
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    salad = [" ".join("".join(rng.choice(letters, 6)) for _ in range(60)) for _ in range(120)]
    good = score_texts(real, corpus)
    bad_loops = score_texts(loops, corpus)
    assert good.distinct_1 > bad_loops.distinct_1 and good.distinct_2 > bad_loops.distinct_2
    assert good.repetition_rate < bad_loops.repetition_rate and good.self_bleu < bad_loops.self_bleu
    assert good.warnings() == [] and bad_loops.warnings()
    bad_salad = score_texts(salad, corpus)
    assert good.corpus_word_share > 0.95 > 0.1 > bad_salad.corpus_word_share
    assert bad_salad.distinct_2_ratio > 1.3 and bad_salad.warnings()
    assert good.memorised_8gram_share > 0.9 > bad_salad.memorised_8gram_share  # real text is all "copied"
