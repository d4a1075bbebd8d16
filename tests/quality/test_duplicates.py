"""Duplicates and memorisation: a real-looking set and a deliberately bad one differ in the expected direction."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gen_jobs.data.digit_sets import bundled_digits
from gen_jobs.data.images import encode_png, resize_uint8
from gen_jobs.families.gpt.data import PYDOC, TextDataConfig, load_documents
from gen_jobs.families.gpt.quality import CorpusSpans
from gen_jobs.quality.duplicates import duplicate_figures, duplicate_warnings


def image_table(images: np.ndarray) -> pa.Table:
    return pa.table({"id": np.arange(len(images)), "image": [{"bytes": png, "path": None} for png in encode_png(images)]})


def test_image_duplicates_exact_and_near():
    raw, _ = bundled_digits()
    real = resize_uint8(raw[:300], 32)  # 300 distinct real digits
    healthy = duplicate_figures(image_table(real))
    assert healthy["exact_duplicates"] == 0 and healthy["near_share"] < 0.02 and duplicate_warnings(healthy) == []

    collapsed = duplicate_figures(image_table(np.repeat(real[:3], 100, axis=0)))  # a generator with 3 outputs
    assert collapsed["exact_duplicates"] == 297 and collapsed["examples"]["exact"][0] == [0, 1]
    assert duplicate_warnings(collapsed)[0].startswith("297 of 300 rows are exact copies of another row (e.g. ids 0 and 1)")

    nudged = real[:50].copy()
    nudged[:, 0, 0] = np.where(nudged[:, 0, 0] > 127, nudged[:, 0, 0] - 40, nudged[:, 0, 0] + 40)  # one pixel
    near = duplicate_figures(image_table(np.concatenate([real[:50], nudged])))
    assert near["exact_duplicates"] == 0 and near["near_duplicates"] >= 45  # the same digits, one pixel apart
    assert near["examples"]["near"][0] == [0, 50]


def test_text_and_token_duplicates():
    corpus = load_documents(TextDataConfig(source=PYDOC))
    words = " ".join(corpus).split()
    pieces = [" ".join(words[i * 500: i * 500 + 120]) for i in range(40)]  # 40 different 120-word texts
    changed = [p.replace(p.split()[60], "CHANGED", 1) for p in pieces[:10]]  # one word in 120: Jaccard ~0.92
    table = pa.table({"id": np.arange(55), "text": [*pieces, *changed, pieces[0], pieces[1], "", "  \n", None]})
    figures = duplicate_figures(table)
    assert figures["exact_duplicates"] == 2 and figures["examples"]["exact"] == [[0, 50], [1, 51]]
    assert figures["near_duplicates"] == 10 and figures["blank"] == 3
    tokens = pa.table({"id": np.arange(3), "tokens": [list(range(100)), list(range(100)), list(range(50, 150))]})
    assert duplicate_figures(tokens)["exact_duplicates"] == 1


def test_memorisation_columns_flag_training_copies():
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.quality.digits import row_figures

    recipe = load_recipe("dcgan_digits", ["train.epochs=1"])
    raw, labels = bundled_digits()
    copies = resize_uint8(raw[:20], 32)  # training digits themselves
    noise = np.random.default_rng(0).integers(0, 256, copies.shape, dtype=np.uint8)
    copied = row_figures({"image": copies, "label": labels[:20]}, recipe)
    novel = row_figures({"image": noise, "label": labels[:20]}, recipe)
    assert copied["copy"].all() and (copied["train_distance"] == 0).all() and (copied["train_distance_pixels"] == 0).all()
    assert not novel["copy"].any() and (novel["train_distance"] > 0.2).all()
    assert copied["confidence"].mean() > novel["confidence"].mean()

    corpus = load_documents(TextDataConfig(source=PYDOC))
    spans = CorpusSpans(corpus)
    excerpt = " ".join(" ".join(corpus).split()[1000:1040])
    assert spans.longest_copied(excerpt) == 40
    assert spans.longest_copied("completely new words that no python manual would ever print in this order") == 0
    assert spans.longest_copied(f"new words first then {excerpt} and new words after") == 40
