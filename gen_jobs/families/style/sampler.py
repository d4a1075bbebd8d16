"""Stylising: checkpoint + input images -> stylised images, the one implementation Ray Data and Ray Serve share.

    raygen generate --checkpoint out/runs/style_sample --input PHOTOS --out DATASET [--styles uniform|K[,K...]]

Row i is input image i // K (K = --samples-per-input) in one style: the given
`style` column (--styles cycles its list by row id; Serve names one), or,
for --styles uniform, `seeding.integers(seed, STYLE, N)` from the row's seed.
The network is deterministic, so a row depends only on (checkpoint, recipe,
input bytes, style). Images are stylised one at a time at their own size
(shrunk first above stylize.max_pixels), so no row depends on its batch.

An input that is not a usable image (not an image, empty, zero pixels, a
decompression bomb) does not stop the job: its row has a null image and a
`status` saying why; every other row has status "ok".
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from gen_jobs.core import checkpoint, seeding
from gen_jobs.data.columns import MEDIA_TYPE, object_column, row_columns, with_features
from gen_jobs.data.images import BadImage, decode_rgb, encode_png
from gen_jobs.families.style.losses import Judge
from gen_jobs.families.style.model import TransformerNet, load_loss_network, stylise
from gen_jobs.families.style.quality import colour_figures, image_figures
from gen_jobs.families.style.recipe import Recipe
from gen_jobs.families.style.training import STYLE_TARGETS

FIGURES = {"change": pa.float32(), "edge_correlation": pa.float32(), "blotch": pa.float32(),
           "colour_shift": pa.float32(), "palette_style": pa.int64(), "style_loss_ratio": pa.float32(),
           "content_loss": pa.float32(), "texture_to_style": pa.float32(), "texture_from_input": pa.float32()}
JUDGED_PIXELS = 256 * 256  # the losses are measured on the images shrunk to at most this (cost, not quality)


class Sampler:
    """Checkpoint -> stylised images. One instance per Ray Data actor or Serve replica.

    __call__ maps {"seed": int64 B, "input": image file bytes or decode_rgb's uint8 H x W x 3 (or None) B,
    optional "label": style index B (-1: draw from the seed), other columns passed through} to the same batch
    (without "input") plus "style", "status", "image" (uint8 H x W x 3, or None) and the figures.
    """

    def __init__(self, checkpoint_uri: str, device: str = "cpu", recipe: Recipe | None = None):
        with checkpoint.LocalCheckpoint(checkpoint_uri, recipe) as ckpt:  # recipe.json is read only when none is given
            self.recipe: Recipe = ckpt.recipe
            state = checkpoint.load_state(ckpt.path, "model")
            targets = checkpoint.load_state(ckpt.path, STYLE_TARGETS)
        self.device = torch.device(device)
        self.styles = len(self.recipe.styles)
        self.net = TransformerNet(self.recipe.model, self.styles)
        self.net.load_state_dict(state)
        self.net.eval().requires_grad_(False).to(self.device)
        self.palettes = self.net.style_colour.cpu().numpy()  # N x 6
        self.judge = None
        if self.recipe.stylize.figures and self.recipe.loss_network.kind == "random":  # rebuilt from its seed
            network, _ = load_loss_network(self.recipe.loss_network)
            layers = len(self.recipe.loss_network.channels) + 1  # the pixels, then each layer
            grams = [[targets[f"{k}.{l}"] for l in range(layers)] for k in range(self.styles)]
            means = ([[targets[f"{k}.{l}.mean"] for l in range(layers)] for k in range(self.styles)]
                     if "0.0.mean" in targets else None)  # older checkpoints: no texture figures
            loss = self.recipe.loss
            self.judge = Judge(network, grams, means, loss.content_layer, loss.colour_weight,
                               loss.centred and means is not None).to(self.device)

    def style_of(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        seeds = seeding.seed_tensor(np.asarray(batch["seed"]), self.device)
        drawn = seeding.integers(seeds, seeding.STYLE, self.styles).cpu().numpy()
        given = batch.get("label")
        return drawn if given is None else np.where(np.asarray(given) >= 0, given, drawn)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        limits = self.recipe.stylize
        styles = self.style_of(batch)
        images, status = [], []
        figures: dict[str, list] = {name: [] for name in FIGURES}
        for data, style in zip(batch["input"], styles):
            try:
                if data is None:
                    raise BadImage("no image (the input's cell is null)")
                if isinstance(data, np.ndarray):  # decoded already (Serve: once per request, for its n rows)
                    before = data
                else:
                    before = decode_rgb(bytes(data), limits.max_pixels, limits.max_input_pixels)
            except BadImage as e:
                images.append(None)
                status.append(f"error: {e}")
                for values in figures.values():
                    values.append(None)
                continue
            after = stylise(self.net, torch.from_numpy(before.copy()).to(self.device), int(style)).cpu().numpy()
            images.append(after)
            status.append("ok")
            if limits.figures:
                row = {**image_figures(before, after), **colour_figures(before, after, int(style), self.palettes),
                       **self.losses(before, after, int(style))}
            else:
                row = {}
            for name, values in figures.items():
                value = row.get(name)
                values.append(None if value != value else value)  # NaN (not measurable here): null
        out = {key: value for key, value in batch.items() if key not in ("input", "label")}
        out.update(style=styles.astype(np.int64), status=object_column(status), image=object_column(images))
        if limits.figures:
            out.update({name: object_column(values) for name, values in figures.items()})
        return out

    @torch.no_grad()
    def losses(self, before: np.ndarray, after: np.ndarray, style: int) -> dict[str, float]:
        """style_loss_ratio, content_loss and the texture figures of one image (needs the loss network: the
        random one). texture_to_style: the output's texture (covariance) distance to its style over the input's
        (< 1: closer); texture_from_input: its distance from its input over the input's to the style (0: the
        input's texture kept, 1: as far from it as the style is). Checkpoints without the targets' means
        (saved before the texture figures) get neither."""
        if self.judge is None:
            return {}
        x, y = (shrink(torch.from_numpy(a.copy()).to(self.device)) for a in (before, after))
        fx, fy = self.judge.features(x), self.judge.features(y)
        k = torch.tensor([style], device=self.device)
        ratio = self.judge.style_loss(fy, k) / self.judge.style_loss(fx, k).clamp_min(1e-12)
        figures = {"style_loss_ratio": round(ratio.item(), 5), "content_loss": round(self.judge.content_loss(fy, fx).item(), 5)}
        if self.judge.covariances is not None:
            to_style, input_to_style, from_input = (d.item() for d in self.judge.texture_distances(fy, fx, k))
            figures.update(texture_to_style=round(to_style / max(input_to_style, 1e-12), 5),
                           texture_from_input=round(from_input / max(input_to_style, 1e-12), 5))
        return figures


def shrink(image: torch.Tensor) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x h x w float in [0, 1], area-shrunk to at most JUDGED_PIXELS."""
    x = image.permute(2, 0, 1)[None].float() / 255.0
    h, w = x.shape[-2:]
    if h * w > JUDGED_PIXELS:
        scale = (JUDGED_PIXELS / (h * w)) ** 0.5
        x = F.interpolate(x, size=(max(1, int(h * scale)), max(1, int(w * scale))), mode="area")
    return x


def to_table(batch: dict[str, np.ndarray], recipe: Recipe) -> pa.Table:
    """Sampler output -> Arrow: id, seed, source, style, image{bytes (PNG), path} (null if unusable), status, figures."""
    images = [None if image is None else encode_png(image[None])[0] for image in batch["image"]]
    cells = [None if png is None else {"bytes": png, "path": f"{i}.png"} for png, i in zip(images, batch["id"])]
    columns = {**row_columns(batch)}
    if "source" in batch:
        columns["source"] = pa.array(list(batch["source"]), pa.string())
    columns["style"] = pa.array(batch["style"], pa.int64())
    columns["image"] = pa.array(cells, MEDIA_TYPE)
    columns["status"] = pa.array(list(batch["status"]), pa.string())
    for name, kind in FIGURES.items():
        if name in batch:
            columns[name] = pa.array(list(batch[name]), kind)
    return with_features(pa.table(columns))
