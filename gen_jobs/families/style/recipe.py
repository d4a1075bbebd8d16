"""The style family's recipe: the styles, the networks, the losses, the training and stylising settings.

    raygen train style_sample [--set train.epochs=4 ...]
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gen_jobs.core.recipes import GuardConfig, RecipeBase, StrictModel


class Style(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="what Serve's `prompt` calls it")
    image: str = Field(description="sklearn:china, sklearn:flower, skimage:NAME, or an image file (path or s3://)")


class LossNetworkConfig(StrictModel):
    """The feature network the perceptual losses are measured in.

    kind "random": a fixed-seed random multi-scale convolutional network (no download; random
    features carry texture and style, Ustyuzhaninov et al. 2016, He et al. 2016).
    kind "vgg19": torchvision's VGG-19 layout, weights from `weights` (safetensors, torchvision's names).
    """

    kind: Literal["random", "vgg19"] = "random"
    seed: int = Field(0, ge=0, description="random: the seed its weights are drawn from")
    channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=2, max_length=6,
                                description="random: the width of each scale (each halves the resolution)")
    kernel_sizes: list[int] = Field(default_factory=lambda: [3], min_length=1,
                                    description="random: parallel kernel sizes at each scale (multi-scale filters)")
    weights: str | None = Field(None, description="vgg19: a .safetensors file (path or s3://) of VGG-19 weights")

    @model_validator(mode="after")
    def _weights_for_vgg(self) -> "LossNetworkConfig":
        if self.kind == "vgg19" and not self.weights:
            raise ValueError("loss_network.kind vgg19 needs loss_network.weights: a .safetensors file of VGG-19 weights")
        return self


class ModelConfig(StrictModel):
    width: int = Field(16, ge=4, le=256, description="channels of the first layer (x2, x4 after each down-sampling)")
    residual_blocks: int = Field(3, ge=0, le=16)
    edge_kernel: int = Field(9, ge=3, le=9, description="kernel of the first and last convolutions (odd)")
    detail_only: float = Field(0.0, ge=0, le=64, description="remove from the network's change what is smoother "
                                                               "than this Gaussian sigma in pixels (0: keep it all): "
                                                               "the network adds texture, never smooth patches")
    colour_match: bool = Field(False, description="give each input its style's colour mean and spread per channel "
                                                  "before the network (an affine recolouring: the palette, whatever "
                                                  "the photo's colour cast); the network then adds the rest")

    @field_validator("edge_kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd (3, 5, 7 or 9)")
        return v


class LossConfig(StrictModel):
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(1.5, ge=0)
    colour_weight: float = Field(4.0, ge=0, description="the pixels' Gram (the palette) counts as this many style layers")
    tv_weight: float = Field(0.1, ge=0, description="total variation (mean neighbour difference), against noise")
    blotch_weight: float = Field(0.0, ge=0, description="smooth patches of change (the low-passed change's spatial "
                                                         "variance, what the blotch figure measures): against blotches")
    content_layer: int = Field(1, ge=0, description="the loss network's layer (scale) the content loss compares")
    centred: bool = Field(False, description="style layers compared by their features' covariance and mean, each "
                                             "normalised (the texture counts); false: by the Gram matrix, which the "
                                             "mean activations dominate (gen_jobs.families.style.losses.Judge)")


class StyleDataConfig(StrictModel):
    content: str = Field("bundled:photos", description="bundled:photos, or a folder / Parquet / s3:// prefix of images")
    image_column: str = Field("image", description="Parquet content: the image column")
    crops: int = Field(512, gt=0, description="random content crops cut for training")
    crop_size: int = Field(96, ge=32, le=1024)
    style_size: int = Field(256, ge=32, le=2048, description="style images are resized to this shorter side")
    seed: int = Field(0, ge=0, description="which crops are cut")


class TrainConfig(StrictModel):
    epochs: int = Field(gt=0)
    batch_size: int = Field(4, gt=0, description="per worker; the global batch is this times --workers")
    lr: float = Field(2e-3, gt=0)
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(2, gt=0)
    max_failures: int = Field(2, ge=0)
    guard: GuardConfig = GuardConfig()
    held_out: int = Field(8, ge=0, description="held-out photo crops scored after every epoch")


class StylizeConfig(StrictModel):
    max_pixels: int = Field(512 * 512, gt=0, description="larger inputs are shrunk (same shape) before stylising")
    max_input_pixels: int = Field(50_000_000, gt=0, description="larger inputs are refused (decompression bombs)")
    figures: bool = Field(True, description="per-row quality columns (change, edges, colour, losses)")


class Recipe(RecipeBase):
    family: Literal["style"] = "style"
    styles: list[Style] = Field(min_length=1, max_length=256)
    model: ModelConfig = ModelConfig()
    loss_network: LossNetworkConfig = LossNetworkConfig()
    loss: LossConfig = LossConfig()
    data: StyleDataConfig = StyleDataConfig()
    train: TrainConfig
    stylize: StylizeConfig = StylizeConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        names = [s.name for s in self.styles]
        if len(set(names)) != len(names):
            raise ValueError(f"style names must differ: {names}")
        if self.loss.content_layer >= self.loss_network_layers():
            raise ValueError(f"loss.content_layer {self.loss.content_layer} is not a layer of the loss network "
                             f"(it has {self.loss_network_layers()}: 0-{self.loss_network_layers() - 1})")
        return self

    def loss_network_layers(self) -> int:
        return len(self.loss_network.channels) if self.loss_network.kind == "random" else 5

    def row_classes(self) -> int | None:
        return len(self.styles)

    def style_index(self, name: str) -> int | None:
        return next((k for k, s in enumerate(self.styles) if s.name == name), None)
