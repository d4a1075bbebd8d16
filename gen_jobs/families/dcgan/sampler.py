"""DCGAN sampling: checkpoint -> images, the one implementation Ray Data and Ray Serve share.

    raygen generate --checkpoint out/runs/dcgan_digits --out DATASET --num-samples N

A row's label and latent come from its seed through gen_jobs.core.seeding's
counter-based noise (label: stream LABEL, latent element j: stream LATENT,
counter j), computed for the whole batch on the sampler's device. A given
label does not change the latent, and no row's numbers depend on its batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from gen_jobs.core import checkpoint
from gen_jobs.data.image_rows import image_table
from gen_jobs.families.dcgan.model import Generator, sample_images
from gen_jobs.families.dcgan.recipe import Recipe
from gen_jobs.quality.digits import row_figures


class Sampler:
    """Checkpoint -> images. One instance per Ray Data actor or Serve replica.

    __call__ maps a batch {"seed": int64 B, optional "label": int64 B (-1 = draw
    from the seed), other columns passed through} to the same batch plus
    "label" (int64 B) and "image" (uint8 B x S x S x C). A dataset row's figures are added
    by `to_table` (Serve does not need them).
    """

    def __init__(self, checkpoint_uri: str, device: str = "cpu", recipe: Recipe | None = None):
        with checkpoint.LocalCheckpoint(checkpoint_uri, recipe) as ckpt:  # recipe.json is read only when none is given
            self.recipe: Recipe = ckpt.recipe
            state = checkpoint.load_state(ckpt.path, "model")
        self.device = torch.device(device)
        self.G = Generator(self.recipe.model)
        self.G.load_state_dict(state)
        self.G.eval().requires_grad_(False).to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = batch.get("label")
        images, drawn = sample_images(self.G, np.asarray(batch["seed"]), None if labels is None else np.asarray(labels), self.device)
        return {**batch, "label": drawn, "image": images}


def to_table(batch: dict[str, np.ndarray], recipe: Recipe) -> pa.Table:
    """Sampler output -> Arrow table: id, seed, [label], [digits: confidence, train_distance, train_distance_pixels,
    copy], image{bytes (PNG), path}."""
    return image_table(batch, recipe.model.conditional, row_figures(batch, recipe))
