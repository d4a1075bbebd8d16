"""Perceptual losses: content (features), style (Gram matrices, or covariances and means), total variation,
blotch (smooth patches of change); and the texture distances the per-row figures report.

Each layer's loss is divided by the mean square of its target, so every layer
and every loss term starts near 1 whatever the loss network's scale (its
random weights or VGG's): the recipe's weights are then the real balance.
"""

from __future__ import annotations

import torch
from torch import nn

from gen_jobs.families.style.model import gaussian_blur, gram
from gen_jobs.families.style.quality import BLOTCH_SCALE


class Judge:
    """The loss network with each style's targets: the losses training minimises and the figures report.

    The style layers are the pixels themselves (their statistics are the colours: the palette) and
    every layer of the loss network; the content layer is the loss network's layer `content_layer`.
    targets[k][l]: style k's Gram at style layer l (C_l x C_l); means[k][l]: its features' mean (C_l).

    A Gram matrix mixes the features' means (their outer product) with their covariance, and in a
    ReLU network the means dominate it, so a Gram loss is met by average colours and activations
    while the texture (the covariance) is left alone. With `centred`, each style layer's loss is
    the covariance distance and the mean distance, each over its target's mean square, so texture
    counts as much as the averages.
    """

    def __init__(self, network: nn.Module, targets: list[list[torch.Tensor]], means: list[list[torch.Tensor]] | None,
                 content_layer: int, colour_weight: float = 1.0, centred: bool = False):
        self.network, self.targets, self.means, self.content_layer = network, targets, means, content_layer
        self.colour_weight = colour_weight  # the pixels' layer (the palette) counts as this many layers
        self.centred = centred
        if centred and means is None:
            raise ValueError("a centred style loss needs the targets' means")
        self.covariances = None if means is None else [
            [g - m[:, None] * m[None, :] for g, m in zip(grams, mus)] for grams, mus in zip(targets, means)]

    @classmethod
    def from_style_images(cls, network: nn.Module, images: list[torch.Tensor], content_layer: int,
                          colour_weight: float = 1.0, centred: bool = False) -> "Judge":
        """images: each style's 3 x H x W float in [0, 1]."""
        with torch.no_grad():
            layers = [[image[None], *network(image[None])] for image in images]
            targets = [[gram(f)[0] for f in style] for style in layers]
            means = [[f.mean(dim=(2, 3))[0] for f in style] for style in layers]
        return cls(network, targets, means, content_layer, colour_weight, centred)

    def to(self, device) -> "Judge":
        self.network.to(device)
        move = lambda nested: None if nested is None else [[t.to(device) for t in style] for style in nested]  # noqa: E731
        self.targets, self.means, self.covariances = move(self.targets), move(self.means), move(self.covariances)
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The style layers of x (B x 3 x H x W): x itself, then each loss-network layer."""
        return [x, *self.network(x)]

    def content_loss(self, out_features: list[torch.Tensor], in_features: list[torch.Tensor]) -> torch.Tensor:
        """Per image (B): feature distance at the content layer, over the input's mean square."""
        a, b = out_features[self.content_layer + 1], in_features[self.content_layer + 1].detach()
        return (a - b).square().mean(dim=(1, 2, 3)) / b.square().mean(dim=(1, 2, 3)).clamp_min(1e-12)

    def style_loss(self, features: list[torch.Tensor], styles: torch.Tensor) -> torch.Tensor:
        """Per image (B): the distance to its style's targets, each layer over its target's mean square."""
        total = torch.zeros(features[0].shape[0], device=features[0].device)
        picked = lambda nested, layer: torch.stack([nested[int(k)][layer] for k in styles])  # noqa: E731
        for layer, f in enumerate(features):
            weight = self.colour_weight if layer == 0 else 1.0
            if self.centred:
                mean, cov = mean_and_covariance(f)  # B x C, B x C x C
                target_mean, target_cov = picked(self.means, layer), picked(self.covariances, layer)
                loss = ((cov - target_cov).square().mean(dim=(1, 2)) / _mean_square(target_cov)
                        + (mean - target_mean).square().mean(dim=1) / _mean_square(target_mean)) / 2
            else:
                target = picked(self.targets, layer)
                loss = (gram(f) - target).square().mean(dim=(1, 2)) / _mean_square(target)
            total = total + weight * loss
        return total / (len(features) - 1 + self.colour_weight)

    def texture_layers(self) -> list[int]:
        """The style layers (indices into `features`) whose statistics are texture: the loss network's middle
        layers. Not the pixels (palette) nor the first layer (colour edges, nearly the palette again); with
        4 layers or more not the last either (VGG's relu5_1: objects more than texture)."""
        layers = len(self.targets[0]) - 1  # the network's
        return list(range(2, layers if layers >= 4 else layers + 1))

    def texture_distances(self, out_features: list[torch.Tensor], in_features: list[torch.Tensor],
                          styles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Covariance distances at the texture layers, per image (B each): (output to its style, input to the
        style, output to its input). Each layer's is the Frobenius distance over the style's covariance norm,
        then averaged over layers: 0.5 is half the style's texture energy away. Covariance, not the Gram:
        the Gram's mean part is met by average colours alone (see the class docstring)."""
        if self.covariances is None:
            raise ValueError("texture distances need the targets' means (a checkpoint from before they were saved)")
        to_style = torch.zeros(out_features[0].shape[0], device=out_features[0].device)
        input_to_style, from_input = torch.zeros_like(to_style), torch.zeros_like(to_style)
        layers = self.texture_layers()
        for layer in layers:
            cov_out, cov_in = mean_and_covariance(out_features[layer])[1], mean_and_covariance(in_features[layer])[1]
            target = torch.stack([self.covariances[int(k)][layer] for k in styles])  # B x C x C
            norm = target.flatten(1).norm(dim=1).clamp_min(1e-12)  # B
            to_style += (cov_out - target).flatten(1).norm(dim=1) / norm
            input_to_style += (cov_in - target).flatten(1).norm(dim=1) / norm
            from_input += (cov_out - cov_in).flatten(1).norm(dim=1) / norm
        return to_style / len(layers), input_to_style / len(layers), from_input / len(layers)


def mean_and_covariance(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B x C x H x W -> (mean B x C, covariance B x C x C over positions)."""
    mean = features.mean(dim=(2, 3))
    return mean, gram(features) - mean[:, :, None] * mean[:, None, :]


def _mean_square(t: torch.Tensor) -> torch.Tensor:
    """Per row of a stacked target (B x ...): its mean square, never 0."""
    return t.flatten(1).square().mean(dim=1).clamp_min(1e-12)


def total_variation(y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (B x 3 x H x W -> scalar)."""
    return (y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., :, 1:] - y[..., :, :-1]).abs().mean()


def smooth_change(change: torch.Tensor) -> torch.Tensor:
    """The spatial variance of the low-passed change (B x 3 x H x W -> scalar): smooth patches of change, what
    quality.blotch measures (Gaussian sigma: 1/BLOTCH_SCALE of the shorter side), less its per-image mean."""
    low = gaussian_blur(change, max(1.0, min(change.shape[-2:]) / BLOTCH_SCALE))
    return (low - low.mean(dim=(2, 3), keepdim=True)).square().mean()
