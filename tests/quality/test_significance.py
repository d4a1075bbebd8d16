"""Quality warnings rest on their sample: a few rows never raise an alarm that many rows of the same figures would."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gen_jobs.core.recipes import load_recipe
from gen_jobs.families.style.quality import GOALS, score_dataset
from gen_jobs.quality.significance import coverage_tail, mean_below, share_below


def test_the_tests_need_evidence_in_proportion_to_the_gap():
    assert coverage_tail(10, 5, 10) == pytest.approx(0.146, abs=0.001)  # 5 of 10 digits in 10 rows: chance
    assert coverage_tail(200, 5, 10) < 1e-30
    assert not share_below(7, 10, 0.9) and share_below(70, 100, 0.9)  # 70% of 10 rows vs 100 rows
    assert not share_below(95, 100, 0.9)  # above the goal is never a warning
    rng = np.random.default_rng(0)
    assert not mean_below([0.3, 0.35, 0.4], 0.5)  # three rows
    assert mean_below(rng.normal(0.4, 0.1, 200), 0.5)
    assert not mean_below(rng.normal(0.49, 0.3, 30), 0.5)  # below the goal, within the noise
    assert not mean_below([0.1, float("nan")], 0.5)


def _stylised(rows: int, change: float, edges: float, own_palette: float) -> pa.Table:
    """A style dataset's figure columns: every row's figures near the given means, two styles."""
    rng = np.random.default_rng(1)
    styles = np.arange(rows) % 2
    nearest = np.where(rng.random(rows) < own_palette, styles, 1 - styles)
    return pa.table({
        "status": ["ok"] * rows,
        "style": styles.tolist(),
        "palette_style": nearest.tolist(),
        "change": rng.normal(change, 0.01, rows).tolist(),
        "edge_correlation": rng.normal(edges, 0.05, rows).tolist(),
        "colour_shift": rng.normal(0.3, 0.05, rows).tolist(),
    })


def test_style_warnings_need_enough_rows_and_say_how_many():
    recipe = load_recipe("style_sample")
    poor = dict(change=GOALS["change"] / 2, edges=GOALS["edge_correlation"] - 0.2, own_palette=0.5)
    assert score_dataset(_stylised(3, **poor), recipe, "unused")["warnings"] == []
    warnings = score_dataset(_stylised(120, **poor), recipe, "unused")["warnings"]
    assert len(warnings) == 3 and all("in 120 rows" in w for w in warnings), warnings
    healthy = score_dataset(_stylised(120, change=0.15, edges=0.85, own_palette=1.0), recipe, "unused")
    assert healthy["warnings"] == [] and healthy["palette_match"] == 1.0
