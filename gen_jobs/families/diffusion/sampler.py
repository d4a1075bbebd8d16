"""Diffusion sampling: checkpoint -> images, the one implementation Ray Data and Ray Serve share.

    raygen generate --checkpoint out/runs/diffusion_digits --out DATASET --num-samples N

A row's label and starting noise come from its seed through gen_jobs.core.seeding's
counter-based noise (label: stream LABEL, noise element j: stream DIFFUSION), so a
row is a pure function of (checkpoint, recipe, seed). The walk from noise to image
is deterministic (DPM-Solver++, or DDIM at eta 0; DDIM's eta noise is the row's
too). The U-Net is always called on `sampling.chunk` rows (the last call padded):
its kernels' float sums depend on the batch size, not on a row's neighbours or
place, so a row's bytes are the same alone, in a Serve request or in a shard.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from gen_jobs.core import checkpoint, seeding
from gen_jobs.data.image_rows import image_table
from gen_jobs.families.diffusion.model import build_unet, sampling_scheduler
from gen_jobs.families.diffusion.recipe import Recipe
from gen_jobs.quality.digits import row_figures


def _denoise(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
             chunk: int) -> torch.Tensor:
    """The U-Net's output for x (N x C x S x S) at timestep t, in calls of exactly `chunk` rows."""
    out = []
    for start in range(0, len(x), chunk):
        part = x[start: start + chunk]
        n = len(part)
        pad = chunk - n
        y = None if labels is None else labels[start: start + chunk]
        if pad:  # zeros in, rows thrown away: the kept rows' numbers are as in a full call
            part = torch.cat([part, part.new_zeros((pad, *part.shape[1:]))])
            y = None if y is None else torch.cat([y, y.new_zeros(pad)])
        out.append(unet(part, t, class_labels=y).sample[:n])
    return torch.cat(out)


def sample_images(unet: torch.nn.Module, recipe: Recipe, seeds: np.ndarray, labels: np.ndarray | None,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Images for rows with the given seeds; labels < 0 (or None) are drawn from the seed.

    Returns (uint8 B x S x S x C, int64 labels B).
    """
    cfg, sampling = recipe.model, recipe.sampling
    s = seeding.seed_tensor(seeds, device)  # B
    y = seeding.integers(s, seeding.LABEL, cfg.num_classes)  # B
    if labels is not None:
        given = torch.as_tensor(np.ascontiguousarray(labels, dtype=np.int64), device=device)
        y = torch.where(given >= 0, given, y)
    shape = (len(s), cfg.channels, cfg.image_size, cfg.image_size)
    n = cfg.channels * cfg.image_size ** 2
    stride = n + n % 2  # Box-Muller draws pairs: each step's normals start on a fresh pair
    scheduler = sampling_scheduler(recipe.noise, sampling.scheduler)
    scheduler.set_timesteps(sampling.steps, device=device)
    x = seeding.normals(s, seeding.DIFFUSION, n).view(shape) * scheduler.init_noise_sigma  # B x C x S x S

    guided = cfg.conditional and sampling.guidance_scale != 1.0
    if guided:  # one call on [conditional rows; the same rows with "no label"]
        both = torch.cat([y, torch.full_like(y, cfg.num_classes)])
    with torch.inference_mode():
        for k, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(x, t)
            if guided:
                out = _denoise(unet, torch.cat([model_in, model_in]), t, both, sampling.chunk)
                cond, uncond = out.chunk(2)
                out = uncond + sampling.guidance_scale * (cond - uncond)
            else:
                out = _denoise(unet, model_in, t, y if cfg.conditional else None, sampling.chunk)
            if sampling.scheduler == "ddim":
                noise = seeding.normals(s, seeding.DIFFUSION, n, start=(k + 1) * stride).view(shape) \
                    if sampling.eta else None
                x = scheduler.step(out, t, x, eta=sampling.eta, variance_noise=noise).prev_sample
            else:
                x = scheduler.step(out, t, x).prev_sample
    images = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return images.cpu().numpy(), y.cpu().numpy()


def load_unet(folder, recipe: Recipe, device: torch.device) -> torch.nn.Module:
    """The checkpoint's EMA U-Net, ready to sample."""
    unet = build_unet(recipe.model)
    unet.load_state_dict(checkpoint.load_state(folder, "model"))
    return unet.eval().requires_grad_(False).to(device)


class Sampler:
    """Checkpoint -> images. One instance per Ray Data actor or Serve replica.

    __call__ maps a batch {"seed": int64 B, optional "label": int64 B (-1 = draw
    from the seed), other columns passed through} to the same batch plus
    "label" (int64 B) and "image" (uint8 B x S x S x C). A dataset row's figures are added
    by `to_table` (Serve does not need them).
    """

    def __init__(self, checkpoint_uri: str, device: str = "cpu", recipe: Recipe | None = None):
        self.device = torch.device(device)
        with checkpoint.LocalCheckpoint(checkpoint_uri, recipe) as ckpt:  # recipe.json is read only when none is given
            self.recipe: Recipe = ckpt.recipe
            self.unet = load_unet(ckpt.path, self.recipe, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = batch.get("label")
        images, drawn = sample_images(self.unet, self.recipe, np.asarray(batch["seed"]),
                                      None if labels is None else np.asarray(labels), self.device)
        return {**batch, "label": drawn, "image": images}


def to_table(batch: dict[str, np.ndarray], recipe: Recipe) -> pa.Table:
    """Sampler output -> Arrow table: id, seed, [label], [digits: confidence, train_distance, train_distance_pixels,
    copy], image{bytes (PNG), path}."""
    return image_table(batch, recipe.model.conditional, row_figures(batch, recipe))
