"""Perceptual losses: content (features), style (Gram matrices), total variation.

Each layer's loss is divided by the mean square of its target, so every layer
and every loss term starts near 1 whatever the loss network's scale (its
random weights or VGG's): the recipe's weights are then the real balance.
"""

from __future__ import annotations

import torch
from torch import nn

from gen_jobs.families.style.model import gram


class Judge:
    """The loss network with each style's Gram targets: the losses training minimises and the figures report.

    The style layers are the pixels themselves (their Gram is the colour second moments:
    the palette) and every layer of the loss network; the content layer is the loss
    network's layer `content_layer`. targets[k][l]: style k's Gram at style layer l (C_l x C_l).
    """

    def __init__(self, network: nn.Module, targets: list[list[torch.Tensor]], content_layer: int,
                 colour_weight: float = 1.0):
        self.network, self.targets, self.content_layer = network, targets, content_layer
        self.colour_weight = colour_weight  # the pixels' layer (the palette) counts as this many layers
        self.scales = [[t.square().mean().clamp_min(1e-12) for t in style] for style in targets]

    @classmethod
    def from_style_images(cls, network: nn.Module, images: list[torch.Tensor], content_layer: int,
                          colour_weight: float = 1.0) -> "Judge":
        """images: each style's 3 x H x W float in [0, 1]."""
        with torch.no_grad():
            targets = [[gram(f)[0] for f in [image[None], *network(image[None])]] for image in images]
        return cls(network, targets, content_layer, colour_weight)

    def to(self, device) -> "Judge":
        self.network.to(device)
        self.targets = [[t.to(device) for t in style] for style in self.targets]
        self.scales = [[s.to(device) for s in style] for style in self.scales]
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The style layers of x (B x 3 x H x W): x itself, then each loss-network layer."""
        return [x, *self.network(x)]

    def content_loss(self, out_features: list[torch.Tensor], in_features: list[torch.Tensor]) -> torch.Tensor:
        """Per image (B): feature distance at the content layer, over the input's mean square."""
        a, b = out_features[self.content_layer + 1], in_features[self.content_layer + 1].detach()
        return (a - b).square().mean(dim=(1, 2, 3)) / b.square().mean(dim=(1, 2, 3)).clamp_min(1e-12)

    def style_loss(self, features: list[torch.Tensor], styles: torch.Tensor) -> torch.Tensor:
        """Per image (B): the Gram distance to its style's targets, each layer over its target's mean square."""
        total = torch.zeros(features[0].shape[0], device=features[0].device)
        for layer, f in enumerate(features):
            g = gram(f)  # B x C x C
            target = torch.stack([self.targets[int(k)][layer] for k in styles])
            scale = torch.stack([self.scales[int(k)][layer] for k in styles])
            weight = self.colour_weight if layer == 0 else 1.0
            total = total + weight * (g - target).square().mean(dim=(1, 2)) / scale
        return total / (len(features) - 1 + self.colour_weight)


def total_variation(y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (B x 3 x H x W -> scalar)."""
    return (y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., :, 1:] - y[..., :, :-1]).abs().mean()
