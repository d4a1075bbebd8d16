"""Training the multi-style transformer on the shared harness.

    raygen train style_sample        (gen_jobs.train; the loop is gen_jobs.training.harness)

Every step stylises this worker's slice of a batch of content crops, each crop
in a random style (torch's generator, seeded per epoch and worker by the
harness), and minimises content + style + total-variation losses measured in
the loss network (gen_jobs.families.style.losses). The transformer is wrapped
in DistributedDataParallel. After every epoch, held-out photo crops (never
trained on) are stylised in every style and scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gen_jobs.core import checkpoint
from gen_jobs.families.style import data
from gen_jobs.families.style.losses import Judge, smooth_change, total_variation
from gen_jobs.families.style.model import TransformerNet, load_loss_network
from gen_jobs.families.style.quality import colour_stats, image_figures
from gen_jobs.families.style.recipe import Recipe
from gen_jobs.training.harness import Workers

STYLE_TARGETS = "style_targets"  # checkpoint weights file: every style's Gram targets "k.l" and feature means
# "k.l.mean" (the figures use them; checkpoints from before the means were saved have Grams only)


def style_tensors(recipe: Recipe) -> list[torch.Tensor]:
    """Each style image as 3 x H x W float in [0, 1]."""
    images = data.style_images(recipe.styles, recipe.data.style_size)
    return [torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0 for image in images]


class TrainingTask:
    def __init__(self, recipe: Recipe, prepared: dict, workers: Workers):
        self.recipe, self.workers = recipe, workers
        device = workers.device
        d = recipe.data
        crops = data.random_crops(data.content_photos(d.content, d.image_column), d.crops, d.crop_size, d.seed)
        self.crops = torch.from_numpy(crops)  # N x 3 x S x S uint8
        self.num_examples = len(self.crops)
        self.held_out = torch.from_numpy(data.held_out_crops(recipe.train.held_out, d.crop_size)) if recipe.train.held_out else None
        network, self.loss_weights_sha256 = load_loss_network(recipe.loss_network)
        styles = style_tensors(recipe)
        self.judge = Judge.from_style_images(network, styles, recipe.loss.content_layer, recipe.loss.colour_weight,
                                             recipe.loss.centred).to(device)
        self.net = TransformerNet(recipe.model, len(recipe.styles))
        self.net.style_colour.copy_(torch.stack([torch.from_numpy(colour_stats(s.permute(1, 2, 0).numpy()))
                                                 for s in styles]))
        self.net.to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=recipe.train.lr)
        self.ddp_net = self.net
        if workers.world > 1:  # (one worker needs no DDP, and can then run outside Ray Train: tests)
            import ray.train.torch

            self.ddp_net = ray.train.torch.prepare_model(self.net, move_to_device=False)

    @staticmethod
    def prepare(recipe: Recipe) -> dict:
        """Fail before any worker starts: every style image and the loss network must load."""
        data.style_images(recipe.styles, 32)
        load_loss_network(recipe.loss_network)
        if recipe.data.content != data.BUNDLED and not data.is_bundled(recipe.data.content):
            from gen_jobs.core import storage
            from gen_jobs.core.errors import UserError

            if not storage.exists(recipe.data.content):
                raise UserError(f"data.content {recipe.data.content} does not exist: give bundled:photos, a folder "
                                "or Parquet of images (path or s3://)")
        return {}

    def losses(self, x: torch.Tensor, styles: torch.Tensor, net) -> dict[str, torch.Tensor]:
        y = net(x, styles)
        out_features = self.judge.features(y)
        with torch.no_grad():  # the content is the input as the network starts from it (its colours matched)
            start = self.net.match_colours(x, styles)
            in_features = self.judge.features(start)
        return {"content_loss": self.judge.content_loss(out_features, in_features).mean(),
                "style_loss": self.judge.style_loss(out_features, styles).mean(),
                "tv_loss": total_variation(y), "blotch_loss": smooth_change(y - start)}

    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        w = self.recipe.loss
        x = self.crops[indices].to(self.workers.device).float() / 255.0  # B x 3 x S x S
        styles = torch.randint(len(self.recipe.styles), (len(indices),)).to(self.workers.device)
        self.ddp_net.train()
        parts = self.losses(x, styles, self.ddp_net)
        loss = (w.content_weight * parts["content_loss"] + w.style_weight * parts["style_loss"]
                + w.tv_weight * parts["tv_loss"] + w.blotch_weight * parts["blotch_loss"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {key: value.item() for key, value in parts.items()}

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Held-out crops in every style: style loss relative to the unstylised crop, edges kept, change."""
        if self.held_out is None:
            return {}
        self.net.eval()
        x = self.held_out.to(self.workers.device).float() / 255.0
        ratios, edges, changes = [], [], []
        for k in range(len(self.recipe.styles)):
            styles = torch.full((len(x),), k, dtype=torch.long, device=x.device)
            y = self.net(x, styles).clamp(0, 1)
            ratios.append((self.judge.style_loss(self.judge.features(y), styles)
                           / self.judge.style_loss(self.judge.features(x), styles).clamp_min(1e-12)).mean().item())
            for before, after in zip(x, y):
                figures = image_figures(_uint8(before), _uint8(after))
                edges.append(figures["edge_correlation"])
                changes.append(figures["change"])
        return {"held_out_style_ratio": round(sum(ratios) / len(ratios), 4),
                "held_out_edges": round(sum(edges) / len(edges), 4),
                "held_out_change": round(sum(changes) / len(changes), 4)}

    def save(self, folder: Path, info: dict) -> None:
        targets = {f"{k}.{layer}": t for k, style in enumerate(self.judge.targets) for layer, t in enumerate(style)}
        targets.update({f"{k}.{layer}.mean": m for k, style in enumerate(self.judge.means) for layer, m in enumerate(style)})
        loss_network = {"kind": self.recipe.loss_network.kind, "seed": self.recipe.loss_network.seed,
                        "weights_sha256": self.loss_weights_sha256}
        checkpoint.write(folder, self.recipe, {"model": self.net.state_dict(), STYLE_TARGETS: targets},
                         {"loss_network": loss_network, **info})

    def train_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def load(self, folder: Path, state: dict) -> None:
        self.net.load_state_dict(checkpoint.load_state(folder, "model"))
        self.optimizer.load_state_dict(state["optimizer"])


def _uint8(x: torch.Tensor):
    """3 x H x W float in [0, 1] -> H x W x 3 uint8 NumPy."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def describe_epoch(m: dict, epochs: int) -> tuple[str, list[str]]:
    line = (f"epoch {m['epoch']}/{epochs}  content {m['content_loss']:.3f}  style {m['style_loss']:.3f}"
            f"  tv {m['tv_loss']:.3f}")
    if "held_out_style_ratio" in m:
        line += (f"  held-out: style loss x{m['held_out_style_ratio']:.2f} of the input's, edges "
                 f"{m['held_out_edges']:.2f}, change {m['held_out_change']:.3f}")
    return line + f"  ({m['seconds']:.1f} s)", []
