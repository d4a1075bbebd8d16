"""The style networks: a feed-forward transformer with conditional instance norm, and the loss network.

TransformerNet (Johnson et al. 2016, with Dumoulin et al. 2017's conditional
instance normalisation): one network holds N styles; every normalisation layer
has a scale and shift per style, and each image picks its own (B styles).

    x B x 3 x H x W in [0, 1] -> pad to a multiple of 4 -> conv k x k (w) -> conv /2 (2w) -> conv /2 (4w)
      -> R residual blocks (4w) -> upsample x2 + conv (2w) -> upsample x2 + conv (w) -> conv k x k (3)
      -> crop to H x W -> a change to the input: sigmoid(logit(x) + change)
    (with model.colour_match, x is first given its style's colour mean and spread per channel)

Up-sampling is nearest-neighbour then a convolution (no transposed convolution:
no checkerboard artefacts); padding is by reflection. Any H x W >= 1 works.

LossNetwork: the features the perceptual losses compare, at several scales.
    random  a fixed-seed random multi-scale network: at each scale parallel k x k
            convolutions (recipe kernel_sizes) + ReLU, then 2 x 2 average pooling
    vgg19   torchvision's VGG-19 `features` (weights from a safetensors file with its names),
            taps relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 on ImageNet-normalised input
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gen_jobs.core.errors import UserError
from gen_jobs.families.style.recipe import LossNetworkConfig, ModelConfig


class CondInstanceNorm(nn.Module):
    """Instance norm whose scale and shift are chosen per image by its style index."""

    def __init__(self, channels: int, styles: int):
        super().__init__()
        self.scale = nn.Embedding(styles, channels)
        self.shift = nn.Embedding(styles, channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = F.instance_norm(x, eps=1e-5)
        return x * self.scale(style)[:, :, None, None] + self.shift(style)[:, :, None, None]


class ConvNorm(nn.Module):
    """Reflection pad, convolution, conditional instance norm, optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, styles: int, relu: bool = True):
        super().__init__()
        self.pad = kernel // 2
        self.conv = nn.Conv2d(cin, cout, kernel, stride)
        self.norm = CondInstanceNorm(cout, styles)
        self.relu = relu

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(F.pad(x, [self.pad] * 4, mode="reflect")), style)
        return F.relu(x) if self.relu else x


class Residual(nn.Module):
    def __init__(self, channels: int, styles: int):
        super().__init__()
        self.a = ConvNorm(channels, channels, 3, 1, styles)
        self.b = ConvNorm(channels, channels, 3, 1, styles, relu=False)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x, style), style)


MIN_SPREAD = 0.05  # colour matching: a channel's spread counts as at least this (a flat one is not amplified)
MIN_SIDE = 16  # smaller images are padded (edge-replicated) to this before the network, then cropped back


class TransformerNet(nn.Module):
    def __init__(self, cfg: ModelConfig, styles: int):
        super().__init__()
        w, k = cfg.width, cfg.edge_kernel
        self.styles, self.colour_match, self.detail_only = styles, cfg.colour_match, cfg.detail_only
        self.down = nn.ModuleList([ConvNorm(3, w, k, 1, styles), ConvNorm(w, 2 * w, 3, 2, styles),
                                   ConvNorm(2 * w, 4 * w, 3, 2, styles)])
        self.blocks = nn.ModuleList([Residual(4 * w, styles) for _ in range(cfg.residual_blocks)])
        self.up = nn.ModuleList([ConvNorm(4 * w, 2 * w, 3, 1, styles), ConvNorm(2 * w, w, 3, 1, styles)])
        self.out = nn.Conv2d(w, 3, k)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.out_pad = k // 2
        # Colour statistics of each style image (mean and std of R, G, B in [0, 1]): N x 6.
        # Saved with the weights, so a checkpoint alone can say which palette each style has.
        self.register_buffer("style_colour", torch.zeros(styles, 6))

    def match_colours(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x (B x 3 x H x W in [0, 1]) with each channel's mean and spread made its style's (style_colour);
        x itself when the recipe's model.colour_match is off."""
        if not self.colour_match:
            return x
        target = self.style_colour[style]  # B x 6: mean R, G, B, then std
        mean, std = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True, correction=0)  # B x 3 x 1 x 1
        # A flat channel keeps its flatness: its spread counts as at least MIN_SPREAD, not blown up to the style's.
        matched = (x - mean) / std.clamp_min(MIN_SPREAD) * target[:, 3:, None, None] + target[:, :3, None, None]
        return matched.clamp(0, 1)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x H x W in [0, 1]; style: B int64 -> B x 3 x H x W in (0, 1)."""
        x = self.match_colours(x, style)
        h, w = x.shape[-2:]
        ph, pw = max(MIN_SIDE, -(-h // 4) * 4), max(MIN_SIDE, -(-w // 4) * 4)
        y = F.pad(x, [0, pw - w, 0, ph - h], mode="replicate") if (ph, pw) != (h, w) else x
        for layer in self.down:
            y = layer(y, style)
        for block in self.blocks:
            y = block(y, style)
        for layer in self.up:
            y = layer(F.interpolate(y, scale_factor=2, mode="nearest"), style)
        change = self.out(F.pad(y, [self.out_pad] * 4, mode="reflect"))[..., :h, :w]
        if self.detail_only:
            change = change - gaussian_blur(change, self.detail_only)
        # A change to the (colour-matched) input in logit space: the untrained network is the identity
        # on it (the last convolution starts at zero), so content and edges are there from the first
        # step and training spends its steps on the style; the sigmoid keeps every colour in (0, 1).
        return torch.sigmoid(torch.logit(x, eps=1e-3) + change)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """B x C x H x W blurred by a Gaussian of `sigma` pixels (separable; borders repeat their edge pixels)."""
    radius = max(1, int(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    for dim in (2, 3):  # rows, then columns; replicate padding works on any size (reflect needs > radius)
        pad = [0, 0, radius, radius] if dim == 2 else [radius, radius, 0, 0]
        shape = (1, 1, len(taps), 1) if dim == 2 else (1, 1, 1, len(taps))
        x = F.conv2d(F.pad(x, pad, mode="replicate"), kernel.view(shape).expand(c, -1, -1, -1), groups=c)
    return x


def stylise(net: TransformerNet, image: torch.Tensor, style: int) -> torch.Tensor:
    """One image (H x W x 3 uint8 tensor) in style `style` -> H x W x 3 uint8."""
    x = image.permute(2, 0, 1)[None].float().div(255.0)  # 1 x 3 x H x W
    with torch.inference_mode():
        y = net(x, torch.tensor([style], device=x.device))
    return y[0].clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0)


# ---------------------------------------------------------------- the loss network


class RandomFeatures(nn.Module):
    """A fixed-seed random multi-scale convolutional network (never trained)."""

    def __init__(self, cfg: LossNetworkConfig):
        super().__init__()
        generator = torch.Generator().manual_seed(cfg.seed)
        self.scales = nn.ModuleList()
        cin = 3
        for cout in cfg.channels:
            convs = nn.ModuleList()
            for j, k in enumerate(cfg.kernel_sizes):
                share = cout // len(cfg.kernel_sizes) + (1 if j < cout % len(cfg.kernel_sizes) else 0)
                conv = nn.Conv2d(cin, share, k, padding=k // 2, padding_mode="reflect")
                with torch.no_grad():  # He-normal weights, zero bias: features keep their scale layer to layer
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / (cin * k * k)) ** 0.5)
                    conv.bias.zero_()
                convs.append(conv)
            self.scales.append(convs)
            cin = cout
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x B x 3 x H x W in [0, 1] -> one feature map per scale."""
        out, y = [], x - 0.5
        for n, convs in enumerate(self.scales):
            if n:
                y = F.avg_pool2d(y, 2, ceil_mode=True)
            y = F.relu(torch.cat([conv(y) for conv in convs], dim=1))
            out.append(y)
        return out


VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
VGG19_TAPS = (1, 6, 11, 20, 29)  # torchvision feature indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1


class VGG19Features(nn.Module):
    """torchvision's vgg19().features, up to relu5_1, with its module indices (so its state-dict names fit)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, item, 3, padding=1), nn.ReLU(inplace=False)]
                cin = item
        self.features = nn.Sequential(*layers[: VGG19_TAPS[-1] + 1])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, y = [], (x - self.mean) / self.std
        for i, layer in enumerate(self.features):
            y = layer(y)
            if i in VGG19_TAPS:
                out.append(y)
        return out

    def load_vgg_weights(self, state: dict[str, torch.Tensor], where: str) -> None:
        """torchvision VGG-19 weights (features.N.weight/bias; classifier.* ignored); errors name the layer."""
        own = self.state_dict()
        for name, param in own.items():
            if name in ("mean", "std"):
                continue
            if name not in state:
                raise UserError(f"{where} has no {name}: it is not a torchvision VGG-19 state dict "
                                "(expected names features.0.weight ... features.34.bias)")
            if tuple(state[name].shape) != tuple(param.shape):
                raise UserError(f"{where}: {name} has shape {tuple(state[name].shape)}, but VGG-19's layer needs "
                                f"{tuple(param.shape)}; these are not VGG-19 weights")
        self.load_state_dict({**{k: v for k, v in state.items() if k in own}, "mean": self.mean, "std": self.std})
        self.requires_grad_(False)


def load_loss_network(cfg: LossNetworkConfig) -> tuple[nn.Module, str | None]:
    """(the loss network in eval mode, the sha256 of its weights file or None for the random one)."""
    if cfg.kind == "random":
        return RandomFeatures(cfg).eval(), None
    import hashlib

    from safetensors.torch import load as load_safetensors

    from gen_jobs.core import storage

    if not storage.exists(cfg.weights):
        raise UserError(f"loss_network.weights {cfg.weights} does not exist: give a .safetensors file of VGG-19 weights")
    data = storage.read_bytes(cfg.weights)
    try:
        state = load_safetensors(data)
    except Exception as e:  # safetensors raises several kinds (SafetensorError, ValueError) for a foreign file
        raise UserError(f"loss_network.weights {cfg.weights} is not a safetensors file ({e})") from None
    net = VGG19Features()
    net.load_vgg_weights(state, f"loss_network.weights {cfg.weights}")
    return net.eval(), hashlib.sha256(data).hexdigest()


def gram(features: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x C x C, averaged over positions (so it does not grow with the image)."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (h * w)
