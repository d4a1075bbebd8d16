"""`raygen demo` as a new user runs it, once per test run, and what it must show.

The command runs from a fresh working directory with its default --out (./out) and
no cluster to join, so it starts its own Ray instance; conftest starts it when the
session begins and these tests, ordered last, wait for it. Its console must be what
the README shows, line shape by line shape (figures and timings may differ; the
lines, their order and the files named may not), every dataset must verify, and every file under "open first:" must
exist. Then the quality bars of the default recipes, trained with their fixed seeds:
the digits DCGAN covers all 10 classes and its samples are worth >= 0.8 of real data
for training a classifier (TSTR); the GPT writes mostly real words; the music model
writes playable pieces whose in-key share is >= 0.9x the chorales' own; the style
network changes held-out photos visibly, keeps their edges and gives each style its
own palette. Last, the demo's healthy checkpoints give no quality warning at 100,
300 and 2,000 rows (several seeds), the sizes where fixed thresholds cried wolf.
"""

from __future__ import annotations

import json
import re
import wave
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, wait_for_demo
from gen_jobs.verify import problems

pytestmark = pytest.mark.slow


@dataclass
class DemoRun:
    cwd: Path  # the user's working directory
    folder: Path  # out/demo-<stamp>
    stdout: str
    stderr: str

    def quality(self, dataset: str) -> dict:
        return json.loads((self.folder / dataset / "quality.json").read_text())

    def checkpoint(self, recipe: str) -> str:
        from gen_jobs.core.checkpoint import latest

        return latest(str(self.folder / "runs" / recipe))  # the run's newest checkpoint, as raygen picks it


@pytest.fixture(scope="module")
def demo(ray_cluster) -> DemoRun:
    """The run conftest started when the session began (conftest.start_demo), once it has finished."""
    returncode, cwd, stdout, stderr = wait_for_demo()
    found = re.search(r"everything is under (\S+)", stdout)
    assert returncode == 0 and found, stdout[-3000:] + stderr[-3000:]
    return DemoRun(cwd, cwd / found.group(1), stdout, stderr)


def shape(line: str) -> str:
    """A console line with its figures, timings and the demo folder's time stamp made alike."""
    line = re.sub(r"demo-\d{8}-\d{6}(-\d+)?", "demo-STAMP", line)
    line = re.sub(r"sha256 [0-9a-f]{12}", "sha256 HEX", line)
    line = re.sub(r"[+-]?\d[\d,]*(\.\d+)?", "#", line)
    return " ".join(line.split())


def readme_demo_output() -> list[list[str]]:
    """The README's 'What `make demo` prints' block, as runs of consecutive lines ('...' separates runs)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"What `make demo` prints.*?```text\n(.*?)```", text, re.S).group(1)
    runs, current = [], []
    for line in block.splitlines():
        if line.strip() == "...":
            runs.append(current)
            current = []
        else:
            current.append(line)
    return [r for r in runs + [current] if r]


PROGRESS_LINE = re.compile(r"^(training|generating): ")  # a live line on a terminal, a line every 5 s elsewhere


def test_the_demo_prints_what_the_readme_shows(demo):
    # Progress lines come from the workers' log stream, whose order against the driver's lines is
    # not fixed; on a terminal they are one line that is overwritten. They are left out of the match.
    printed = [shape(line) for line in demo.stdout.splitlines() if not PROGRESS_LINE.match(line)]
    at = 0
    for run in readme_demo_output():
        wanted = [shape(line) for line in run]
        starts = [i for i in range(at, len(printed) - len(wanted) + 1) if printed[i:i + len(wanted)] == wanted]
        assert starts, f"the README shows lines the demo no longer prints here (after line {at}):\n" + "\n".join(run) \
                       + "\n--- the demo printed:\n" + demo.stdout
        at = starts[0] + len(wanted)
    assert demo.stderr.strip() == "", demo.stderr[-3000:]  # nothing of Ray's on the console


def test_every_dataset_verifies_and_every_file_to_open_first_exists(demo):
    for dataset in ("dcgan_digits", "gpt_pydoc", "music_chorales", "style_sample"):
        assert re.search(rf"^OK out/demo-[-\d]+/{dataset}: \d+ shards?, ", demo.stdout, re.M), dataset
        assert problems(str(demo.folder / dataset))[0] == []
    listed = demo.stdout.split("open first:")[1].split("try the models over HTTP")[0]
    files = re.findall(r"(out/\S+\.(?:png|md|wav))", listed)
    assert len(files) == 7 and all((demo.cwd / f).is_file() for f in files), listed


def test_dcgan_meets_the_quality_bar(demo):
    quality = demo.quality("dcgan_digits")
    assert quality["num_samples"] == 10_000 and quality["classes_covered"] == 10
    assert quality["tstr_ratio"] >= 0.8, quality["summary"]
    assert quality["warnings"] == [], quality["summary"]
    grid = Image.open(demo.folder / "dcgan_digits_grid.png")
    assert grid.size == (48 + 10 * 68, 4 + 10 * 68) and grid.mode == "L"  # 64-pixel tiles, gaps, a label margin


def test_gpt_writes_mostly_real_words(demo):
    quality = demo.quality("gpt_pydoc")
    assert quality["held_out_perplexity"] < 100, quality["summary"]
    assert quality["memorised_8gram_share"] < 0.5, quality["summary"]
    # >= 90% of the words are words of the corpus, with the corpus's variety
    assert quality["corpus_word_share"] >= 0.9, quality["summary"]
    assert 0.7 <= quality["distinct_2_ratio"] <= 1.3, quality["summary"]
    assert quality["warnings"] == [], quality["warnings"]
    samples = demo.stdout.split("  sample 1:")[1].split("  quality:")[0]
    assert "\\n" not in samples and len(samples.splitlines()) > 3  # text on its own lines, not a Python repr


def test_music_writes_playable_pieces_in_key(demo):
    quality = demo.quality("music_chorales")
    assert quality["playable_share"] == 1.0, quality["summary"]  # every midi parses with mido, >= 8 notes
    assert quality["in_key_ratio"] >= 0.9, quality["summary"]  # in-key share >= 0.9x the chorales' own
    assert quality["generated"]["in_key_share"] > quality["random_tokens"]["in_key_share"]
    assert quality["generated"]["copied_8gram_share"] < 0.5, quality["summary"]
    assert quality["warnings"] == [], quality["warnings"]
    wavs = sorted(demo.folder.glob("music_chorales_*.wav"))
    assert len(wavs) == 3 and len(list(demo.folder.glob("music_chorales_*.mid"))) == 3
    with wave.open(str(wavs[0])) as w:
        assert w.getnframes() > w.getframerate()  # more than a second of music
    assert Image.open(demo.folder / "music_chorales_piano_roll.png").size[0] > 100


def test_style_stylises_held_out_photos_in_each_styles_palette(demo):
    quality = demo.quality("style_sample")
    assert quality["stylised"] == quality["num_samples"] == 64 and quality["bad_inputs"] == 0  # 32 photos x 2 styles
    assert quality["change"] >= 0.08, quality["summary"]  # outputs visibly differ from their inputs ...
    assert quality["edge_correlation"] >= 0.5, quality["summary"]  # ... yet keep their edges ...
    assert quality["palette_match"] >= 0.9, quality["summary"]  # ... and take their own style's palette
    assert all(s["colour_shift"] > 0.2 for s in quality["per_style"].values()), quality["per_style"]
    assert quality["style_loss_ratio"] < 0.6, quality["summary"]
    grid = Image.open(demo.folder / "style_sample_before_after.png")
    assert grid.size == (6 + 3 * (256 + 6), 24 + 6 * (256 + 6))  # input, flower, retina at 256 px under titles
    # No blotches on the demo's held-out photos: the figure is in every row and the card, and gives no warning.
    assert quality["blotch"] < 0.05 and not any("blotch" in w for w in quality["warnings"]), quality["summary"]
    card = (demo.folder / "style_sample" / "README.md").read_text()
    assert "| `blotch` |" in card and "| `texture_to_style` |" in card and "| `texture_from_input` |" in card
    assert all("blotch" in s and "texture_to_style" in s for s in quality["per_style"].values()), quality["per_style"]


def test_style_imposes_palette_and_texture_on_tinted_photos_it_never_saw(demo):
    """The style family's goals (gen_jobs.families.style.colour_casts): 12 crops of a held-out photo in six
    strong colour casts, stylised in each style by the demo's checkpoint."""
    from gen_jobs.families.style.colour_casts import cast_figures, misses, tinted_crops
    from gen_jobs.families.style.sampler import Sampler

    figures = cast_figures(Sampler(demo.checkpoint("style_sample")), tinted_crops())
    assert misses(figures) == [], figures


@pytest.mark.parametrize("family, recipe, sizes", [
    ("dcgan", "dcgan_digits", [(100, 1), (300, 1), (300, 2), (2_000, 1), (2_000, 2)]),
    ("gpt", "gpt_pydoc", [(100, 1), (300, 2)]),
    ("music", "music_chorales", [(100, 1)]),
])
def test_healthy_checkpoints_give_no_warning_at_small_sizes(demo, tmp_path, family, recipe, sizes):
    from gen_jobs.generate import GenerateArgs, generate

    for rows, seed in sizes:
        manifest = generate(GenerateArgs(checkpoint=demo.checkpoint(recipe), out=str(tmp_path / f"{rows}-{seed}"),
                                         num_samples=rows, seed=seed, card=False), log=lambda _: None)
        assert manifest.quality["warnings"] == [], (rows, seed, manifest.quality["summary"])
    if family == "dcgan":  # rows that all asked for one class are compared with that class's real digits
        manifest = generate(GenerateArgs(checkpoint=demo.checkpoint(recipe), out=str(tmp_path / "threes"),
                                         num_samples=2_000, labels="3", card=False), log=lambda _: None)
        assert manifest.quality["warnings"] == [], manifest.quality["summary"]
