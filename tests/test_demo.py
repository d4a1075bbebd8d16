"""The embedded demo, end to end: train with the default recipes, generate, verify, score.

These are the quality bars of the default recipes, trained with their fixed seeds:
the digits DCGAN covers all 10 classes, does not collapse within classes, and its
samples are worth >= 0.8 of real data for training a classifier (TSTR); the GPT
writes mostly real words.
"""

import pytest
from PIL import Image

from gen_jobs.demo import DemoArgs, run_family
from gen_jobs.families.gpt.data import PYDOC, TextDataConfig, load_documents
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
    assert grid.size == (320, 320) and grid.mode == "L"
    assert any(line.startswith("OK ") for line in lines)


@pytest.mark.slow
def test_gpt_demo_writes_mostly_real_words(ray_cluster, tmp_path):
    result = run_family("gpt", DemoArgs(out=str(tmp_path), num_samples=200), log=lambda *_: None)
    quality = result["quality"]
    assert quality["held_out_perplexity"] < 100, quality["summary"]
    assert quality["memorised_8gram_share"] < 0.5, quality["summary"]
    vocabulary = {w.strip(".,:;()\"'*`") for doc in load_documents(TextDataConfig(source=PYDOC)) for w in doc.split()}
    from gen_jobs.demo import read_table

    words = [w.strip(".,:;()\"'*`") for t in read_table(result["dataset"], ["text"]).column("text").to_pylist() for w in t.split()]
    words = [w for w in words if w.isalpha()]
    assert sum(w in vocabulary for w in words) / len(words) > 0.7
