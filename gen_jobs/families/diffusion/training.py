"""Training the diffusion family on the shared harness: the denoising step, its EMA, its checkpoint.

    raygen train diffusion_digits        (gen_jobs.train; the loop is gen_jobs.training.harness)

A step noises each image at a random timestep (the recipe's schedule), shows
the U-Net the row's label, or "no label" for a `train.label_dropout` share of
rows (what classifier-free guidance needs), and regresses the U-Net's output on
v (or on the noise). Gradients are averaged over workers in one all-reduce, as
the DCGAN does (gen_jobs.training.harness.Workers), and an EMA of the weights is
what the sampler loads.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gen_jobs.core import checkpoint
from gen_jobs.data.image_sources import check_source, load_images
from gen_jobs.families.diffusion.model import build_unet, training_scheduler
from gen_jobs.families.diffusion.recipe import Recipe
from gen_jobs.families.diffusion.sampler import sample_images
from gen_jobs.quality.digits import DigitsReference, collapse_warnings, scorable
from gen_jobs.training.harness import Workers


class Denoiser:
    """The U-Net, its EMA copy and its optimiser: the state a checkpoint saves."""

    def __init__(self, recipe: Recipe, device: torch.device):
        self.recipe, self.device = recipe, device
        self.unet = build_unet(recipe.model).to(device)
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        t = recipe.train
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.noise = training_scheduler(recipe.noise)
        self.alphas = self.noise.alphas_cumprod.to(device)
        self.step = 0

    def train_step(self, x0: torch.Tensor, labels: torch.Tensor | None, workers: Workers | None = None) -> float:
        """One update on a batch of real images x0 (B x C x S x S in [-1, 1]) and their labels (B)."""
        cfg, t = self.recipe.model, self.recipe.train
        b = x0.shape[0]
        noise = torch.randn_like(x0)
        steps = torch.randint(0, self.recipe.noise.train_timesteps, (b,), device=self.device)
        noisy = self.noise.add_noise(x0, noise, steps)
        if self.recipe.noise.prediction_type == "v_prediction":
            target = self.noise.get_velocity(x0, noise, steps)
        else:
            target = noise
        y = None
        if cfg.conditional:
            dropped = torch.rand(b, device=self.device) < t.label_dropout
            y = torch.where(dropped, torch.full_like(labels, cfg.num_classes), labels)  # num_classes: "no label"
        loss = F.mse_loss(self.unet(noisy, steps, class_labels=y).sample, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if workers:
            workers.average_gradients(self.unet)
        self.opt.step()
        self.step += 1
        self._update_ema()
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up: early on the EMA follows the U-Net closely, so the first epochs' samples are not noise.
        decay = min(self.recipe.train.ema_decay, (1 + self.step) / (10 + self.step))
        for p_ema, p in zip(self.ema.parameters(), self.unet.parameters()):
            p_ema.lerp_(p, 1 - decay)

    def save(self, folder: Path, info: dict) -> None:
        checkpoint.write(folder, self.recipe, {"model": self.ema.state_dict(),  # what the sampler loads
                                               "unet": self.unet.state_dict()}, {"step": self.step, **info})

    def train_state(self) -> dict:
        return {"opt": self.opt.state_dict(), "step": self.step}

    def load(self, folder: Path, state: dict) -> None:
        self.ema.load_state_dict(checkpoint.load_state(folder, "model"))
        self.unet.load_state_dict(checkpoint.load_state(folder, "unet"))
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])


class TrainingTask:
    """The harness's view of the diffusion family: a denoising step on a slice of the images, digits figures
    of the EMA model's samples each epoch."""

    def __init__(self, recipe: Recipe, prepared: dict, workers: Workers):
        self.recipe, self.workers = recipe, workers
        images, labels = load_images(recipe.data, recipe.model.image_size, recipe.model.channels)
        if recipe.model.conditional and labels is None:
            raise ValueError(f"{recipe.data.source} has no labels: set model.conditional=false to train unconditionally")
        self.images = torch.from_numpy(images)  # N x C x S x S in [-1, 1]
        self.labels = torch.from_numpy(labels) if labels is not None else None  # N
        self.num_examples = len(self.images)
        self.model = Denoiser(recipe, workers.device)
        self.reference = None
        if workers.rank == 0 and recipe.train.quality_samples and scorable(recipe):
            self.reference = DigitsReference(recipe.model.image_size, source=recipe.data.source)

    @staticmethod
    def prepare(recipe: Recipe) -> dict:
        check_source(recipe.data)  # fail fast, before any worker starts
        return {}

    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        device = self.workers.device
        labels = self.labels[indices].to(device) if self.labels is not None else None
        return {"loss": self.model.train_step(self.images[indices].to(device), labels, self.workers)}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """The training log's figures: the EMA U-Net's samples for fixed seeds, labels cycling 0..9."""
        if self.reference is None:
            return {}
        cfg = self.recipe.model
        seeds = np.arange(self.recipe.train.quality_samples, dtype=np.int64)
        labels = (seeds % cfg.num_classes) if cfg.conditional else None
        images, drawn = sample_images(self.model.ema, self.recipe, seeds, labels, self.workers.device)
        figures = self.reference.score(images, drawn if cfg.conditional else None, tstr=False)
        return figures.model_dump(exclude_none=True, exclude={"num_samples", "requested_classes"})

    def modules(self) -> list[torch.nn.Module]:
        return [self.model.unet]

    def collapse(self, figures: dict) -> list[str]:
        """The mode-collapse warnings of an epoch's figures, significant for the samples scored."""
        if "classes_covered" not in figures:
            return []
        scored = {**figures, "num_samples": self.recipe.train.quality_samples}
        return [w for w in collapse_warnings(scored) if w.startswith("mode collapse")]

    def save(self, folder: Path, info: dict) -> None:
        self.model.save(folder, info)

    def train_state(self) -> dict:
        return self.model.train_state()

    def load(self, folder: Path, state: dict) -> None:
        self.model.load(folder, state)


def describe_epoch(m: dict, epochs: int) -> tuple[str, list[str]]:
    """The training log's line for one epoch (rank 0's reported metrics), and its warnings."""
    line = f"epoch {m['epoch']}/{epochs}  loss {m['loss']:.4f}"
    if "classes_covered" in m:
        line += f"  classes {m['classes_covered']}/10  diversity {m['diversity']:.2f}"
        if "label_agreement" in m:
            line += f"  label agreement {m['label_agreement']:.2f}"
    line += f"  ({m['seconds']:.1f} s)"
    if "classes_covered" in m and m["epoch"] > epochs // 4:  # early epochs are expected to look unformed
        return line, [f"warning: {w}" for w in collapse_warnings(m)]
    return line, []
