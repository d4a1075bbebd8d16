"""DCGAN sampling: checkpoint -> images, the one implementation Ray Data and Ray Serve share.

    raygen generate --checkpoint out/runs/dcgan_digits --out DATASET --num-samples N

A row's label and latent come from its seed through gen_jobs.seeding's
counter-based noise (label: stream LABEL, latent element j: stream LATENT,
counter j), computed for the whole batch on the sampler's device. A given
label does not change the latent, and no row's numbers depend on its batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from gen_jobs import checkpoint, seeding
from gen_jobs.families.dcgan.model import Generator, ModelConfig
from gen_jobs.families.dcgan.recipe import Recipe
from gen_jobs.columns import media_column, row_columns, with_features
from gen_jobs.images import encode_png


def sample_images(G: nn.Module, seeds: np.ndarray, labels: np.ndarray | None, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Images for rows with the given seeds; labels < 0 (or None) are drawn from the seed.

    Returns (uint8 B x S x S x C, int64 labels B).
    """
    cfg: ModelConfig = G.cfg
    s = seeding.seed_tensor(seeds, device)  # B
    y = seeding.integers(s, seeding.LABEL, cfg.num_classes)  # B
    if labels is not None:
        given = torch.as_tensor(np.ascontiguousarray(labels, dtype=np.int64), device=device)
        y = torch.where(given >= 0, given, y)
    z = seeding.normals(s, seeding.LATENT, cfg.latent_dim)  # B x latent
    with torch.inference_mode():
        x = G(z, y if cfg.conditional else None)  # B x C x S x S
    images = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return images.cpu().numpy(), y.cpu().numpy()


class Sampler:
    """Checkpoint -> images. One instance per Ray Data actor or Serve replica.

    __call__ maps a batch {"seed": int64 B, optional "label": int64 B (-1 = draw
    from the seed), other columns passed through} to the same batch plus
    "label" (int64 B), "image" (uint8 B x S x S x C) and, for digits models,
    "confidence" (float64 B, gen_jobs.families.dcgan.quality.digits_confidence).
    """

    def __init__(self, checkpoint_uri: str, device: str = "cpu", recipe: Recipe | None = None):
        with checkpoint.LocalCheckpoint(checkpoint_uri) as ckpt:
            self.recipe: Recipe = recipe or ckpt.recipe
            state = checkpoint.load_state(ckpt.path, "model")
        self.device = torch.device(device)
        self.G = Generator(self.recipe.model)
        self.G.load_state_dict(state)
        self.G.eval().requires_grad_(False).to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = batch.get("label")
        images, drawn = sample_images(self.G, np.asarray(batch["seed"]), None if labels is None else np.asarray(labels), self.device)
        out = {**batch, "label": drawn, "image": images}
        from gen_jobs.families.dcgan.quality import digits_confidence, scorable  # (scikit-learn: only when sampling)

        if scorable(self.recipe):  # digits: how sure the reference classifier is of each sample
            cfg = self.recipe.model
            out["confidence"] = digits_confidence(images, drawn if cfg.conditional else None, cfg.image_size)
        return out


def to_table(batch: dict[str, np.ndarray], recipe: Recipe) -> pa.Table:
    """Sampler output -> Arrow table: id, seed, [label], [confidence (digits)], image{bytes (PNG), path}."""
    columns = row_columns(batch)
    if recipe.model.conditional:
        columns["label"] = pa.array(batch["label"], pa.int64())
    if "confidence" in batch:
        columns["confidence"] = pa.array(batch["confidence"], pa.float64())
    columns["image"] = media_column(encode_png(batch["image"]), [f"{i}.png" for i in batch["id"]])
    return with_features(pa.table(columns))
