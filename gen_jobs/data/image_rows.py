"""The Arrow table of an image family's rows (dcgan, diffusion): id, seed, [prompt], [label], [figures], image.

    called by each image family's `to_table`, which adds its per-row figures (gen_jobs.quality.digits.row_figures)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gen_jobs.data.columns import media_column, row_columns, with_features
from gen_jobs.data.images import encode_png


def image_table(batch: dict[str, np.ndarray], conditional: bool, figures: dict[str, np.ndarray]) -> pa.Table:
    """Sampler output {id, seed, [prompt], label (B), image (uint8 B x S x S x C)} -> id, seed, [prompt
    (text-to-image models)], [label (conditional models)], the row's figures (bool `copy`, float64 others),
    image{bytes (PNG), path "<id>.png"}."""
    columns = row_columns(batch)
    if "prompt" in batch:
        columns["prompt"] = pa.array([str(p) for p in batch["prompt"]], pa.string())
    if conditional:
        columns["label"] = pa.array(batch["label"], pa.int64())
    for name, values in figures.items():
        columns[name] = pa.array(values, pa.bool_() if name == "copy" else pa.float64())
    columns["image"] = media_column(encode_png(batch["image"]), [f"{i}.png" for i in batch["id"]])
    return with_features(pa.table(columns))
