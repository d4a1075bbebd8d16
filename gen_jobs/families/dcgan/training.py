"""Training DCGAN on the shared harness: the GAN step, its stabilisers, its checkpoint.

    raygen train dcgan_digits        (gen_jobs.train; the loop is gen_jobs.training.harness)

G and D are not wrapped in DistributedDataParallel: a GAN step runs G twice and
D three times before each backward, which DDP's single-forward bookkeeping does
not fit. Instead each worker trains on its slice of every batch and the
gradients are all-reduced by hand (as StyleGAN2-ADA does), over the process
group Ray Train set up (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gen_jobs.core import checkpoint
from gen_jobs.families.dcgan.model import Discriminator, Generator, sample_images
from gen_jobs.families.dcgan.recipe import Recipe
from gen_jobs.training.harness import Workers
from gen_jobs.training.image_task import ImageTrainingTask, describe_digits_epoch


def diff_augment(x: torch.Tensor, policy: list[str]) -> torch.Tensor:
    """DiffAugment (Zhao et al., 2020): differentiable augmentations, same for real and fake.

    x: B x C x H x W in [-1, 1]. Each sample gets its own random parameters.
    """
    b, _, h, w = x.shape
    dev = x.device
    if "color" in policy:
        x = x + (torch.rand(b, 1, 1, 1, device=dev) - 0.5)  # brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(b, 1, 1, 1, device=dev) * 2) + mean  # saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (torch.rand(b, 1, 1, 1, device=dev) + 0.5) + mean  # contrast
    if "translation" in policy:
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        tx = torch.randint(-sh, sh + 1, (b, 1, 1), device=dev)
        ty = torch.randint(-sw, sw + 1, (b, 1, 1), device=dev)
        gb, gx, gy = torch.meshgrid(
            torch.arange(b, device=dev), torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij"
        )
        gx = torch.clamp(gx + tx + 1, 0, h + 1)
        gy = torch.clamp(gy + ty + 1, 0, w + 1)
        padded = F.pad(x, [1, 1, 1, 1])  # zero border, shifted in from outside
        x = padded.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2)
    if "cutout" in policy:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        ox = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=dev)
        oy = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=dev)
        gb, gx, gy = torch.meshgrid(
            torch.arange(b, device=dev), torch.arange(ch, device=dev), torch.arange(cw, device=dev), indexing="ij"
        )
        gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
        gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
        mask = torch.ones(b, h, w, device=dev, dtype=x.dtype)
        mask[gb, gx, gy] = 0
        x = x * mask.unsqueeze(1)
    return x


def _mode_seeking_penalty(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSGAN (Mao et al., 2019): penalise G when two latents give near-identical images.

    Pairs sample i with sample i + B/2 (same label, different latent).
    Returns 1 / (image distance / latent distance).
    """
    half = fake.shape[0] // 2
    image_dist = (fake[:half] - fake[half: 2 * half]).abs().mean()
    latent_dist = (z[:half] - z[half: 2 * half]).abs().mean()
    return 1.0 / (image_dist / latent_dist + 1e-5)


def d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def g_loss(fake_scores: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake_scores.mean()
    return F.softplus(-fake_scores).mean()


class GAN:
    """G, its EMA copy, D and their optimisers: the state a checkpoint saves."""

    def __init__(self, recipe: Recipe, device: torch.device):
        t = recipe.train
        self.recipe = recipe
        self.device = device
        self.G = Generator(recipe.model).to(device)
        self.D = Discriminator(recipe.model, t.spectral_norm, t.minibatch_std).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
        self.step = 0

    def train_step(self, real: torch.Tensor, labels: torch.Tensor | None, workers: Workers | None = None) -> tuple[float, float]:
        """One D update and one G update on a batch of real images (B x C x S x S)."""
        t, cfg = self.recipe.train, self.recipe.model
        b = real.shape[0]
        fake_labels = torch.randint(cfg.num_classes, (b,), device=self.device) if cfg.conditional else None
        real_labels = labels if cfg.conditional else None
        z = torch.randn(b, cfg.latent_dim, device=self.device)

        # D: real up, fake down (fake detached: G gets no gradient here)
        with torch.no_grad():
            fake = self.G(z, fake_labels)
        loss_d = d_loss(
            self.D(diff_augment(real, t.diffaugment), real_labels),
            self.D(diff_augment(fake, t.diffaugment), fake_labels),
            t.loss,
        )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        if workers:
            workers.average_gradients(self.D)
        self.opt_d.step()

        # G: fool D
        z = torch.randn(b, cfg.latent_dim, device=self.device)
        if t.mode_seeking and fake_labels is not None:  # pairs (i, i + B/2) share a label
            half = b // 2
            fake_labels = torch.cat([fake_labels[:half], fake_labels[:half], fake_labels[2 * half:]])
        fake = self.G(z, fake_labels)
        loss_g = g_loss(self.D(diff_augment(fake, t.diffaugment), fake_labels), t.loss)
        if t.mode_seeking:
            loss_g = loss_g + t.mode_seeking * _mode_seeking_penalty(fake, z)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if workers:
            workers.average_gradients(self.G)
        self.opt_g.step()

        self.step += 1
        self._update_ema()
        return loss_d.item(), loss_g.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up: early on the EMA follows G closely, so the first samples are not noise.
        decay = min(self.recipe.train.ema_decay, (1 + self.step) / (10 + self.step))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, 1 - decay)


    def save(self, folder: Path, info: dict) -> None:
        checkpoint.write(
            folder,
            self.recipe,
            {
                "model": self.G_ema.state_dict(),  # what the sampler loads
                "generator": self.G.state_dict(),
                "discriminator": self.D.state_dict(),
            },
            {"step": self.step, **info},
        )

    def train_state(self) -> dict:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "step": self.step}

    def load(self, folder: Path, state: dict) -> None:
        self.G_ema.load_state_dict(checkpoint.load_state(folder, "model"))
        self.G.load_state_dict(checkpoint.load_state(folder, "generator"))
        self.D.load_state_dict(checkpoint.load_state(folder, "discriminator"))
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])


class TrainingTask(ImageTrainingTask):
    """The harness's view of DCGAN: a step on a slice of the images, digits figures each epoch."""

    def __init__(self, recipe: Recipe, prepared: dict, workers: Workers):
        super().__init__(recipe, workers, GAN(recipe, workers.device))

    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        loss_d, loss_g = self.model.train_step(*self.batch(indices), self.workers)
        return {"loss_d": loss_d, "loss_g": loss_g}

    def sample(self, seeds: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return sample_images(self.model.G_ema, seeds, labels, self.workers.device)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model.G, self.model.D]


def describe_epoch(m: dict, epochs: int) -> tuple[str, list[str]]:
    """The training log's line for one epoch (rank 0's reported metrics), and its warnings."""
    return describe_digits_epoch(m, epochs, f"loss_d {m['loss_d']:.3f}  loss_g {m['loss_g']:.3f}")
