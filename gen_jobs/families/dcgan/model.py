"""DCGAN's modules: a class-conditional generator and a projection discriminator.

G uses GroupNorm, not BatchNorm: it normalises each sample on its own, so a
row's image never depends on the other rows of its batch, and training and
sampling behave the same.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gen_jobs.core import seeding
from gen_jobs.core.recipes import StrictModel


class ModelConfig(StrictModel):
    image_size: int = Field(32, description="output side in pixels: a power of two from 16 to 128")
    channels: Literal[1, 3] = Field(1, description="1 = grayscale, 3 = RGB")
    latent_dim: int = Field(64, gt=0, le=1024)
    width: int = Field(32, gt=0, le=1024, description="channels of G's last and D's first layer")
    num_classes: int = Field(10, gt=0)
    conditional: bool = Field(True, description="class-conditional G (label embedding) and projection D")

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v not in (16, 32, 64, 128):
            raise ValueError("must be one of 16, 32, 64, 128")
        return v



def _num_upsamplings(image_size: int) -> int:
    return int(math.log2(image_size)) - 2  # 4x4 -> image_size


class Generator(nn.Module):
    """(z: B x latent_dim, label: B) -> image B x C x S x S in [-1, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        n_up = _num_upsamplings(cfg.image_size)
        chans = [cfg.width * 2 ** (n_up - i) for i in range(n_up + 1)]  # 4x4 ... SxS
        cond_dim = cfg.latent_dim if cfg.conditional else 0
        self.embed = nn.Embedding(cfg.num_classes, cond_dim) if cfg.conditional else None
        # The stem is DCGAN's 4x4 transposed convolution of a 1x1 input rather than a
        # Linear layer: CPU GEMMs sum in a batch-size-dependent order, convolutions
        # here do not, and a row's pixels must not depend on its batch.
        self.stem = nn.ConvTranspose2d(cfg.latent_dim + cond_dim, chans[0], 4, bias=False)
        self.stem_norm = nn.GroupNorm(_groups(chans[0]), chans[0])
        blocks = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.GroupNorm(_groups(c_out), c_out),
                nn.ReLU(inplace=True),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(chans[-1], cfg.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)  # B x (latent + latent)
        h = self.stem(z[:, :, None, None])  # B x chans[0] x 4 x 4
        h = F.relu(self.stem_norm(h))
        return torch.tanh(self.to_image(self.blocks(h)))  # B x C x S x S


class Discriminator(nn.Module):
    """(image B x C x S x S, label B) -> realness score B. Projection D when conditional."""

    def __init__(self, cfg: ModelConfig, use_spectral_norm: bool = True, minibatch_std: int = 0):
        super().__init__()
        sn = spectral_norm if use_spectral_norm else (lambda m: m)
        n_down = _num_upsamplings(cfg.image_size)
        chans = [cfg.channels] + [cfg.width * 2**i for i in range(n_down)]  # S -> 4x4
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
        self.down = nn.Sequential(*layers)
        self.minibatch_std = minibatch_std
        extra = 1 if minibatch_std else 0
        self.final = nn.Sequential(sn(nn.Conv2d(chans[-1] + extra, chans[-1], 3, padding=1)), nn.LeakyReLU(0.2, inplace=True))
        self.head = sn(nn.Linear(chans[-1], 1))
        self.embed = sn(nn.Embedding(cfg.num_classes, chans[-1])) if cfg.conditional else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.down(x)  # B x F x 4 x 4
        if self.minibatch_std:
            h = _append_minibatch_std(h, self.minibatch_std)  # B x (F+1) x 4 x 4
        h = self.final(h).sum(dim=(2, 3))  # B x F
        out = self.head(h).squeeze(1)  # B
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(dim=1)  # projection: <e_y, h>
        return out


def _append_minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """ProGAN's minibatch standard deviation: D sees how varied a group of samples is,
    so a G that collapses to few outputs per class is easy to tell from real data."""
    b, c, height, width = h.shape
    g = math.gcd(group, b)
    y = h.view(g, -1, c, height, width)  # G x (B/G) x F x H x W
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # B/G
    std = std.view(1, -1, 1, 1, 1).expand(g, -1, 1, height, width).reshape(b, 1, height, width)
    return torch.cat([h, std], dim=1)


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


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
