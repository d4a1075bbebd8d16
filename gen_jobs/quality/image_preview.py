"""The dataset card's picture of an image dataset (dcgan, diffusion): one row per label (conditional
models), else a 10 x 10 grid.

    called by gen_jobs.quality.card through the family's `preview`
"""

from __future__ import annotations

import numpy as np

from gen_jobs.core.family import Preview

ROWS_READ = 2_000  # enough for 10 of each of 10 labels, drawn uniformly
CELL = 64  # pixels a sample is shown at, at least (small samples are enlarged, pixel for pixel)


def preview(dataset: str, manifest) -> Preview:
    from gen_jobs.data.images import decode_png, image_grid, labelled_grid, png_bytes
    from gen_jobs.data.manifest import read_shards

    conditional = manifest.recipe.get("model", {}).get("conditional")  # else its rows have no label column
    table = read_shards(dataset, manifest.shards, ["label", "image"] if conditional else ["image"], max_rows=ROWS_READ)
    images = np.stack([decode_png(cell["bytes"]) for cell in table.column("image").to_pylist()])  # N x H x W x C
    if conditional and None not in (labels := table.column("label").to_pylist()):
        grid = labelled_grid(images, np.asarray(labels), cell=CELL)
        if grid is not None:
            return Preview(png_bytes(grid), "samples, one row per label (written at the left), the first 10 of each")
    scale = max(1, CELL // images.shape[1])
    shown = images[:100].repeat(scale, axis=1).repeat(scale, axis=2)
    return Preview(png_bytes(image_grid(shown, 10)), f"the first {len(shown)} samples")
