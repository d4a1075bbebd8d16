"""DCGAN images: a class-conditional DCGAN with the stabilisers small data needs.

One file, three faces (see DESIGN.md):
    Recipe                  the pydantic recipe of this family
    Generator, Discriminator
    train_loop_per_worker   the Ray Train loop (gen_jobs.train runs it)
    Sampler                 checkpoint -> images; used by Ray Data and Ray Serve
    to_table                sampler output -> Arrow table of the dataset

Stabilisers, each a recipe switch: spectral norm on D, hinge or non-saturating
loss, two time-scale learning rates (TTUR), an EMA of G's weights (sampling
uses it), and DiffAugment (translation, cutout, colour) on real and fake alike.

G uses GroupNorm, not BatchNorm: it normalises each sample on its own, so a
row's image never depends on the other rows of its batch, and training and
sampling behave the same.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gen_jobs import checkpoint
from gen_jobs.image_data import DIGITS, ImageDataConfig, load_images
from gen_jobs.image_encoding import encode_png, image_field, huggingface_metadata
from gen_jobs.recipes import RecipeBase, StrictModel

Augmentation = Literal["translation", "cutout", "color"]
TAKES_PROMPTS = False  # rows are (seed, label), no text prompt


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


class TrainConfig(StrictModel):
    epochs: int = Field(gt=0)
    batch_size: int = Field(32, gt=0, description="per worker; the global batch is this times --workers")
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0, description="two time-scale update rule: D learns faster than G")
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    loss: Literal["hinge", "nonsaturating"] = "hinge"
    spectral_norm: bool = True
    minibatch_std: int = Field(4, ge=0, description="group size of D's minibatch-stddev feature against mode collapse; 0 = off")
    mode_seeking: float = Field(0.1, ge=0, description="weight of the mode-seeking term (MSGAN) in G's loss; 0 = off")
    ema_decay: float = Field(0.995, ge=0, lt=1, description="EMA of G's weights; 0 disables it")
    diffaugment: list[Augmentation] = Field(default_factory=lambda: ["translation", "color"])
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(10, gt=0, description="epochs between checkpoints (the last is always kept)")
    quality_samples: int = Field(500, ge=0, description="EMA samples scored each epoch; 0 disables scoring")
    max_failures: int = Field(2, ge=0, description="worker failures Ray Train recovers from")


class Recipe(RecipeBase):
    family: Literal["dcgan"] = "dcgan"
    model: ModelConfig = ModelConfig()
    data: ImageDataConfig = ImageDataConfig()
    train: TrainConfig

    @model_validator(mode="after")
    def _digits_fit(self) -> "Recipe":
        if self.data.source == DIGITS and self.model.conditional and self.model.num_classes != 10:
            raise ValueError("sklearn:digits has 10 classes: set model.num_classes=10")
        return self


# ---------------------------------------------------------------- modules


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


# ---------------------------------------------------------------- training


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

    def train_step(self, real: torch.Tensor, labels: torch.Tensor | None, sync=None) -> tuple[float, float]:
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
        if sync:
            sync(self.D)
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
        if sync:
            sync(self.G)
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
        torch.save({"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "step": self.step},
                   folder / "train_state.pt")

    def restore(self, folder: Path) -> None:
        self.G_ema.load_state_dict(checkpoint.load_state(folder, "model"))
        self.G.load_state_dict(checkpoint.load_state(folder, "generator"))
        self.D.load_state_dict(checkpoint.load_state(folder, "discriminator"))
        state = torch.load(folder / "train_state.pt", map_location=self.device, weights_only=True)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])


def sample_images(G: nn.Module, seeds: np.ndarray, labels: np.ndarray | None, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Images for rows with the given seeds; labels < 0 (or None) are drawn from the seed.

    Each row has its own generator: its label is drawn first, then its latent, so
    a row's noise is the same whether or not its label was given, and never
    depends on the other rows. Returns (uint8 B x S x S x C, int64 labels B).
    """
    cfg: ModelConfig = G.cfg
    zs, drawn = [], []
    for i, seed in enumerate(seeds.tolist()):
        gen = torch.Generator().manual_seed(int(seed))
        label = int(torch.randint(cfg.num_classes, (1,), generator=gen))
        if labels is not None and labels[i] >= 0:
            label = int(labels[i])
        drawn.append(label)
        zs.append(torch.randn(cfg.latent_dim, generator=gen))
    z = torch.stack(zs).to(device)  # B x latent
    y = torch.tensor(drawn, dtype=torch.int64)
    with torch.inference_mode():
        x = G(z, y.to(device) if cfg.conditional else None)  # B x C x S x S
    images = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return images.cpu().numpy(), y.numpy()


def prepare_config(recipe: Recipe) -> dict:
    """Driver-side, before any worker starts: fail fast when the data is not there."""
    from gen_jobs.image_data import check_source

    check_source(recipe.data)
    return {}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train loop: one process per worker, gradients averaged over all workers.

    G and D are not wrapped in DistributedDataParallel: a GAN step runs G twice and
    D three times before each backward, which DDP's single-forward bookkeeping does
    not fit. Instead each worker trains on its slice of every batch and the
    gradients are all-reduced by hand (as StyleGAN2-ADA does), over the process
    group Ray Train set up (gloo on CPU, NCCL on GPU).
    """
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from gen_jobs.quality import DigitsReference

    recipe = Recipe.model_validate(config["recipe"])
    t = recipe.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(t.seed)  # the same initial weights on every worker
    images, labels = load_images(recipe.data, recipe.model.image_size, recipe.model.channels)
    if recipe.model.conditional and labels is None:
        raise ValueError(f"{recipe.data.source} has no labels: set model.conditional=false to train unconditionally")
    images_t = torch.from_numpy(images)
    labels_t = torch.from_numpy(labels) if labels is not None else None

    gan = GAN(recipe, device)
    start_epoch = 0
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as folder:
            gan.restore(Path(folder))
            start_epoch = json.loads((Path(folder) / checkpoint.INFO_FILE).read_text())["epoch"]
    torch.manual_seed(t.seed + 1000 * (rank + 1) + start_epoch)  # distinct noise per worker

    def sync(module: nn.Module) -> None:
        if world == 1:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    reference = DigitsReference() if rank == 0 and t.quality_samples and _scorable(recipe) else None
    n = images_t.shape[0]
    steps_per_epoch = max(1, n // (t.batch_size * world))
    for epoch in range(start_epoch, t.epochs):
        started = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed + epoch))  # same on all workers
        losses = torch.zeros(2)
        for step in range(steps_per_epoch):
            idx = order[step * t.batch_size * world:][rank::world][: t.batch_size]
            real = images_t[idx].to(device)
            lab = labels_t[idx].to(device) if labels_t is not None else None
            losses += torch.tensor(gan.train_step(real, lab, sync))
        losses /= steps_per_epoch
        if world > 1:
            dist.all_reduce(losses)
            losses /= world
        metrics = {"epoch": epoch + 1, "loss_d": round(losses[0].item(), 4), "loss_g": round(losses[1].item(), 4)}
        if reference is not None:
            metrics.update(reference.training_figures(gan.G_ema, recipe.model, t.quality_samples, device))
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        last = epoch + 1 == t.epochs
        if rank == 0 and (last or (epoch + 1) % t.checkpoint_every == 0):
            with tempfile.TemporaryDirectory(prefix="raygen-ckpt-") as folder:
                gan.save(Path(folder), {"epoch": epoch + 1, "metrics": metrics})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics, checkpoint=None)


def _scorable(recipe: Recipe) -> bool:
    """The digits reference classifier can score this model's samples."""
    return recipe.data.source == DIGITS and recipe.model.num_classes == 10


def describe_epoch(m: dict, epochs: int) -> str:
    """The training log's line for one epoch (rank 0's reported metrics)."""
    from gen_jobs.quality import collapse_warnings

    line = f"epoch {m['epoch']}/{epochs}  loss_d {m['loss_d']:.3f}  loss_g {m['loss_g']:.3f}"
    if "classes_covered" in m:
        line += f"  classes {m['classes_covered']}/10  KL {m['kl_to_uniform']:.3f}  diversity {m['diversity']:.2f}"
        if "label_agreement" in m:
            line += f"  label agreement {m['label_agreement']:.2f}"
    line += f"  ({m['seconds']:.1f} s)"
    if "classes_covered" in m and m["epoch"] > epochs // 4:  # early epochs are expected to look collapsed
        line += "".join(f"\n  warning: {w}" for w in collapse_warnings(m))
    return line


# ---------------------------------------------------------------- sampling


class Sampler:
    """Checkpoint -> images. One instance per Ray Data actor or Serve replica.

    __call__ maps a batch {"seed": int64 B, optional "label": int64 B (-1 = draw
    from the seed), other columns passed through} to the same batch plus
    "label" (int64 B) and "image" (uint8 B x S x S x C).
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
        return {**batch, "label": drawn, "image": images}


def to_table(batch: dict[str, np.ndarray], recipe: Recipe) -> pa.Table:
    """Sampler output -> Arrow table: id, seed, [label], image{bytes (PNG), path}."""
    columns = {
        "id": pa.array(batch["id"], pa.int64()),
        "seed": pa.array(batch["seed"], pa.int64()),
    }
    features = {"id": {"dtype": "int64", "_type": "Value"}, "seed": {"dtype": "int64", "_type": "Value"}}
    if recipe.model.conditional:
        columns["label"] = pa.array(batch["label"], pa.int64())
        features["label"] = {"dtype": "int64", "_type": "Value"}
    pngs = encode_png(batch["image"])
    columns["image"] = pa.StructArray.from_arrays(
        [pa.array(pngs, pa.binary()), pa.array([f"{i}.png" for i in batch["id"]], pa.string())],
        fields=list(image_field().type),
    )
    features["image"] = {"_type": "Image"}
    table = pa.table(columns)
    return table.replace_schema_metadata(huggingface_metadata(features))


def score_dataset(table: pa.Table, recipe: Recipe, checkpoint_uri: str) -> dict | None:
    """The digits quality figures of a generated table, when the reference classifier applies."""
    if not _scorable(recipe):
        return None
    from gen_jobs.image_encoding import decode_png
    from gen_jobs.quality import DigitsReference

    images = np.stack([decode_png(cell["bytes"]) for cell in table.column("image").to_pylist()])
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64) if recipe.model.conditional else None
    quality = DigitsReference(recipe.model.image_size).score(images, labels)
    return {"summary": quality.summary(), "warnings": quality.warnings(), **quality.model_dump(exclude_none=True)}
