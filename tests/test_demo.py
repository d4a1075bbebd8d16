"""The embedded demo, end to end: train with the default recipes, generate, verify, score.

These are the quality bars of the default recipes, trained with their fixed seeds:
the digits DCGAN covers all 10 classes, does not collapse within classes, and its
samples are worth >= 0.8 of real data for training a classifier (TSTR); the GPT
writes mostly real words; the music model writes playable pieces whose in-key
share is >= 0.9x the chorales' own; the style network changes held-out photos
visibly, keeps their edges and gives each style its own palette.
"""

import pytest
from PIL import Image

from gen_jobs.demo import DemoArgs, run_family
from gen_jobs.verify import problems


@pytest.mark.slow
def test_dcgan_demo_meets_the_quality_bar(ray_cluster, tmp_path):
    lines = []
    result = run_family("dcgan", DemoArgs(out=str(tmp_path)), log=lines.append)
    quality = result["quality"]
    assert quality["num_samples"] == 10_000
    assert quality["classes_covered"] == 10
    assert quality["tstr_ratio"] >= 0.8, quality["summary"]
    assert quality["warnings"] == [], quality["summary"]
    assert problems(result["dataset"])[0] == []
    grid = Image.open(result["grid"])
    assert grid.size == (48 + 10 * 68, 4 + 10 * 68) and grid.mode == "L"  # 64-pixel tiles, gaps, a label margin
    assert any(line.startswith("OK ") for line in lines)


@pytest.mark.slow
def test_gpt_demo_writes_mostly_real_words(ray_cluster, tmp_path):
    result = run_family("gpt", DemoArgs(out=str(tmp_path), num_samples=200), log=lambda *_: None)
    quality = result["quality"]
    assert quality["held_out_perplexity"] < 100, quality["summary"]
    assert quality["memorised_8gram_share"] < 0.5, quality["summary"]
    # The goals: >= 90% of the words are words of the corpus, with the corpus's variety.
    assert quality["corpus_word_share"] >= 0.9, quality["summary"]
    assert 0.7 <= quality["distinct_2_ratio"] <= 1.3, quality["summary"]
    assert quality["warnings"] == [], quality["warnings"]


@pytest.mark.slow
def test_music_demo_writes_playable_pieces_in_key(ray_cluster, tmp_path):
    import wave

    result = run_family("music", DemoArgs(out=str(tmp_path), num_samples=100), log=lambda *_: None)
    quality = result["quality"]
    assert quality["playable_share"] == 1.0, quality["summary"]  # every midi parses with mido, >= 8 notes
    assert quality["in_key_ratio"] >= 0.9, quality["summary"]  # in-key share >= 0.9x the chorales' own
    assert quality["generated"]["in_key_share"] > quality["random_tokens"]["in_key_share"]
    assert quality["generated"]["copied_8gram_share"] < 0.5, quality["summary"]
    files = result["files"]
    assert sum(f.endswith(".mid") for f in files) == 3 and sum(f.endswith(".wav") for f in files) == 3
    with wave.open(next(f for f in files if f.endswith(".wav"))) as w:
        assert w.getnframes() > w.getframerate()  # more than a second of music
    assert Image.open(next(f for f in files if f.endswith(".png"))).size[0] > 100


@pytest.mark.slow
def test_style_demo_stylises_held_out_photos_in_each_styles_palette(ray_cluster, tmp_path):
    result = run_family("style", DemoArgs(out=str(tmp_path)), log=lambda *_: None)
    quality = result["quality"]
    assert quality["stylised"] == quality["num_samples"] == 64 and quality["bad_inputs"] == 0  # 32 photos x 2 styles
    assert quality["change"] >= 0.08, quality["summary"]  # outputs visibly differ from their inputs ...
    assert quality["edge_correlation"] >= 0.5, quality["summary"]  # ... yet keep their edges ...
    assert quality["palette_match"] >= 0.9, quality["summary"]  # ... and take their own style's palette
    assert all(s["colour_shift"] > 0.2 for s in quality["per_style"].values()), quality["per_style"]
    assert quality["style_loss_ratio"] < 0.6, quality["summary"]
    grid = Image.open(result["files"][0])
    assert grid.size == (3 * 160, 6 * 160 + 30)  # input, flower, retina, under their titles; six photos
