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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from gen_jobs.core import checkpoint, seeding
from gen_jobs.data.image_rows import image_table
from gen_jobs.families.diffusion.model import build_unet, sampling_scheduler, training_scheduler
from gen_jobs.families.diffusion.pipeline import load_pipeline, sample_prompted
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


class Walk:
    """Rows on their way from noise to images, one denoising step at a time.

    The rows' labels (given, or drawn from the seed where < 0 or None) and starting
    noise come from their seeds; `schedule` is the training scheduler's config (None:
    the recipe's noise; a U-Net pipeline made elsewhere gives its own). Rows whose
    `live` entry is False before a step get no more U-Net calls (a Serve client left):
    the others' numbers do not change, since every call holds `sampling.chunk` rows.
    """

    def __init__(self, unet: torch.nn.Module, recipe: Recipe, seeds: np.ndarray, labels: np.ndarray | None,
                 device: torch.device, schedule: dict | None = None):
        cfg, self.sampling, self.unet = recipe.model, recipe.sampling, unet
        self.s = seeding.seed_tensor(seeds, device)  # B
        y = seeding.integers(self.s, seeding.LABEL, cfg.num_classes)  # B
        if labels is not None:
            given = torch.as_tensor(np.ascontiguousarray(labels, dtype=np.int64), device=device)
            y = torch.where(given >= 0, given, y)
        self.labels = y
        self.shape = (len(self.s), cfg.channels, cfg.image_size, cfg.image_size)
        self.n = cfg.channels * cfg.image_size ** 2
        self.scheduler = sampling_scheduler(schedule or training_scheduler(recipe.noise).config, self.sampling.scheduler)
        self.scheduler.set_timesteps(self.sampling.steps, device=device)
        self.x = seeding.normals(self.s, seeding.DIFFUSION, self.n).view(self.shape) * self.scheduler.init_noise_sigma
        self.guided = cfg.conditional and self.sampling.guidance_scale != 1.0
        self.class_labels = y if cfg.conditional else None
        self.no_label = cfg.num_classes  # the class embedding that means "no label"
        self.live = torch.ones(len(self.s), dtype=torch.bool, device=device)  # B

    def steps(self) -> Iterator[int]:
        """Take the denoising steps, yielding each one's index after it (rows in `live` only)."""
        sampling = self.sampling
        stride = self.n + self.n % 2  # Box-Muller draws pairs: each step's normals start on a fresh pair
        with torch.inference_mode():
            for k, t in enumerate(self.scheduler.timesteps):
                everyone = bool(self.live.all())
                live = slice(None) if everyone else self.live.nonzero().squeeze(1)  # L rows
                if not everyone and len(live) == 0:
                    return
                model_in = self.scheduler.scale_model_input(self.x, t)[live]  # L x C x S x S
                if self.guided:  # one call on [conditional rows; the same rows with "no label"]
                    y = self.class_labels[live]
                    both = torch.cat([y, torch.full_like(y, self.no_label)])
                    cond, uncond = _denoise(self.unet, torch.cat([model_in, model_in]), t, both, sampling.chunk).chunk(2)
                    predicted = uncond + sampling.guidance_scale * (cond - uncond)
                else:
                    y = None if self.class_labels is None else self.class_labels[live]
                    predicted = _denoise(self.unet, model_in, t, y, sampling.chunk)
                if everyone:
                    out = predicted
                else:  # rows no longer live get nothing: their x is never read
                    out = torch.zeros_like(self.x)
                    out[live] = predicted
                if sampling.scheduler == "ddim":
                    noise = seeding.normals(self.s, seeding.DIFFUSION, self.n, start=(k + 1) * stride).view(
                        self.shape) if sampling.eta else None
                    self.x = self.scheduler.step(out, t, self.x, eta=sampling.eta, variance_noise=noise).prev_sample
                else:
                    self.x = self.scheduler.step(out, t, self.x).prev_sample
                yield k

    def images(self) -> np.ndarray:
        """The rows' images as they stand: uint8 B x S x S x C."""
        return ((self.x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class PromptedWalk:
    """Rows of a text-to-image pipeline on their way to images, one pipeline call (`sampling.chunk` rows,
    every denoising step) at a time: Walk's interface, so Serve's step batches and __call__ drive both alike.

    A call whose rows are none of them `live` any more (their Serve clients left) is not made. A call
    runs the pipeline's own loop, so a row is stopped between calls, not between its steps.
    """

    def __init__(self, pipe, schedule: dict, recipe: Recipe, seeds: np.ndarray, prompts: list[str],
                 device: torch.device):
        self.pipe, self.schedule, self.recipe, self.device = pipe, schedule, recipe, device
        self.seeds, self.prompts = seeds, prompts
        self.labels = torch.full((len(seeds),), -1, dtype=torch.int64, device=device)  # B: no class
        self.live = torch.ones(len(seeds), dtype=torch.bool, device=device)  # B
        cfg = recipe.model
        self._images = np.zeros((len(seeds), cfg.image_size, cfg.image_size, cfg.channels), np.uint8)

    def steps(self) -> Iterator[int]:
        """Make the rows' images a pipeline call at a time, yielding each call's index after it."""
        chunk = self.recipe.sampling.chunk
        for k, start in enumerate(range(0, len(self.seeds), chunk)):
            rows = slice(start, start + chunk)
            if self.live[rows].any():
                with torch.inference_mode():
                    self._images[rows] = sample_prompted(self.pipe, self.schedule, self.recipe, self.seeds[rows],
                                                         self.prompts[rows], self.device)
            yield k

    def images(self) -> np.ndarray:
        """The rows' images, uint8 B x S x S x C (black for rows whose call was not made)."""
        return self._images


def sample_images(unet: torch.nn.Module, recipe: Recipe, seeds: np.ndarray, labels: np.ndarray | None,
                  device: torch.device, schedule: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images for rows with the given seeds, every step taken (Walk says what the arguments mean).

    Returns (uint8 B x S x S x C, int64 labels B).
    """
    walk = Walk(unet, recipe, seeds, labels, device, schedule)
    for _ in walk.steps():
        pass
    return walk.images(), walk.labels.cpu().numpy()


@dataclass
class Denoising:
    """One Serve row's state between steps, as model_server's step batches read it (like a text row's)."""

    label: int  # given, or drawn from the seed
    finish_reason: str | None = None  # "stop" once its image is made; "cancelled" when its client left
    image: np.ndarray | None = None  # uint8 S x S x C, once made

    def snapshot(self) -> "Denoising":
        return self  # nothing of it changes once read: the image is set once, at the end


def load_unet(folder, recipe: Recipe, device: torch.device) -> torch.nn.Module:
    """The checkpoint's EMA U-Net, ready to sample."""
    unet = build_unet(recipe.model)
    unet.load_state_dict(checkpoint.load_state(folder, "model"))
    return unet.eval().requires_grad_(False).to(device)


class Sampler:
    """Checkpoint -> images. One instance per Ray Data actor or Serve replica.

    __call__ maps a batch {"seed": int64 B, optional "label": int64 B (-1 = draw
    from the seed), optional "prompt" (text-to-image pipelines), other columns passed
    through} to the same batch plus "label" (int64 B) and "image" (uint8 B x S x S x C).
    A dataset row's figures are added by `to_table` (Serve does not need them).
    """

    def __init__(self, checkpoint_uri: str, device: str = "cpu", recipe: Recipe | None = None):
        self.device = torch.device(device)
        self.pipe = self.schedule = None
        with checkpoint.LocalCheckpoint(checkpoint_uri, recipe) as ckpt:  # recipe.json is read only when none is given
            self.recipe: Recipe = ckpt.recipe
            if self.recipe.pipeline is None:
                self.unet = load_unet(ckpt.path, self.recipe, self.device)
            else:  # a diffusers pipeline folder made elsewhere
                self.pipe = load_pipeline(ckpt.path, self.device)
                self.unet = self.pipe.unet.eval().requires_grad_(False)
                self.schedule = dict(self.pipe.scheduler.config)  # its own, before any sampler replaces it

    def _walk(self, batch: dict[str, np.ndarray]) -> Walk | PromptedWalk:
        seeds = np.asarray(batch["seed"])
        if self.recipe.prompted:
            prompts = [str(p) for p in batch.get("prompt", [""] * len(seeds))]
            return PromptedWalk(self.pipe, self.schedule, self.recipe, seeds, prompts, self.device)
        labels = batch.get("label")
        return Walk(self.unet, self.recipe, seeds, None if labels is None else np.asarray(labels),
                    self.device, self.schedule)

    def stream(self, batch: dict[str, np.ndarray]) -> Iterator[list[Denoising]]:
        """Sample a batch, yielding its rows' states after every step (the same objects): a row whose
        finish_reason is set meanwhile ("cancelled": its Serve client left) gets no more U-Net calls. Serve's
        step batches use it. A text-to-image pipeline's step is one pipeline call (PromptedWalk)."""
        walk = self._walk(batch)
        rows = [Denoising(int(label)) for label in walk.labels.cpu().numpy()]
        for _ in walk.steps():
            yield rows
            walk.live = torch.tensor([row.finish_reason is None for row in rows], device=self.device)
        for row, image in zip(rows, walk.images()):
            if row.finish_reason is None:
                row.finish_reason, row.image = "stop", image
        yield rows

    def output(self, batch: dict[str, np.ndarray], rows: list[Denoising]) -> dict[str, np.ndarray]:
        """The output columns of a streamed batch (`rows`: the last states `stream` yielded for it); a row
        stopped before its image was made (nobody reads it) is black."""
        cfg = self.recipe.model
        blank = np.zeros((cfg.image_size, cfg.image_size, cfg.channels), np.uint8)
        return {**batch, "label": np.array([row.label for row in rows], dtype=np.int64),
                "image": np.stack([blank if row.image is None else row.image for row in rows])}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        walk = self._walk(batch)
        for _ in walk.steps():
            pass
        return {**batch, "label": walk.labels.cpu().numpy(), "image": walk.images()}


def to_table(batch: dict[str, np.ndarray], recipe: Recipe) -> pa.Table:
    """Sampler output -> Arrow table: id, seed, [label], [digits: confidence, train_distance, train_distance_pixels,
    copy], image{bytes (PNG), path}."""
    return image_table(batch, recipe.model.conditional, row_figures(batch, recipe))
