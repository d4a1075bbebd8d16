"""The embedded demo, end to end: train with the default recipe, generate, verify, score.

This is the quality bar of the default recipe: with its fixed seed, a demo-sized
training must cover all 10 classes and give samples worth >= 0.8 of real data
for training a classifier (TSTR), without collapsing within classes.
"""

import pytest
from PIL import Image

from gen_jobs.demo import DemoArgs, run
from gen_jobs.verify import problems


@pytest.mark.slow
def test_demo_meets_the_quality_bar(ray_cluster, tmp_path):
    lines = []
    result = run(DemoArgs(out=str(tmp_path)), log=lines.append)
    quality = result["quality"]
    assert quality.num_samples == 10_000
    assert quality.classes_covered == 10
    assert quality.tstr_ratio >= 0.8, quality.summary()
    assert quality.warnings() == [], quality.summary()
    assert problems(result["dataset"])[0] == []
    grid = Image.open(result["grid"])
    assert grid.size == (320, 320) and grid.mode == "L"
    assert any(line.startswith("OK ") for line in lines)
