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

import numpy as np
import torch
import torch.nn.functional as F

from gen_jobs.core import checkpoint
from gen_jobs.families.diffusion.model import build_unet, training_scheduler
from gen_jobs.families.diffusion.recipe import Recipe
from gen_jobs.families.diffusion.sampler import sample_images
from gen_jobs.training.harness import Workers
from gen_jobs.training.image_task import ImageTrainingTask, describe_digits_epoch


class Denoiser:
    """The U-Net, its EMA copy and its optimiser: the state a checkpoint saves."""

    def __init__(self, recipe: Recipe, device: torch.device):
        self.recipe, self.device = recipe, device
        self.unet = build_unet(recipe.model).to(device)
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        t = recipe.train
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.noise = training_scheduler(recipe.noise)
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


class TrainingTask(ImageTrainingTask):
    """The harness's view of the diffusion family: a denoising step on a slice of the images, digits figures
    of the EMA model's samples each epoch."""

    def __init__(self, recipe: Recipe, prepared: dict, workers: Workers):
        super().__init__(recipe, workers, Denoiser(recipe, workers.device))

    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        return {"loss": self.model.train_step(*self.batch(indices), self.workers)}

    def sample(self, seeds: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return sample_images(self.model.ema, self.recipe, seeds, labels, self.workers.device)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model.unet]


def describe_epoch(m: dict, epochs: int) -> tuple[str, list[str]]:
    """The training log's line for one epoch (rank 0's reported metrics), and its warnings."""
    return describe_digits_epoch(m, epochs, f"loss {m['loss']:.4f}")
