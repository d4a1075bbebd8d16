"""The DCGAN family's recipe: model size, training data, training settings.

Stabilisers, each a recipe switch: spectral norm on D, hinge or non-saturating
loss, two time-scale learning rates (TTUR), an EMA of G's weights (sampling
uses it), DiffAugment (translation, cutout, colour) on real and fake alike,
D's minibatch-stddev feature and the mode-seeking term (MSGAN) against collapse.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gen_jobs.core.recipes import GuardConfig, RecipeBase, StrictModel
from gen_jobs.data.digit_sets import DIGIT_SETS
from gen_jobs.data.image_sources import ImageDataConfig
from gen_jobs.families.dcgan.model import ModelConfig
from gen_jobs.quality.digits import DigitsQualityConfig

Augmentation = Literal["translation", "cutout", "color"]


class GanGuard(GuardConfig):
    # A healthy GAN's hinge or non-saturating losses stay in single digits; far above is divergence.
    max_loss: float | None = Field(100.0, gt=0, description="a step loss above this is divergence; null: only "
                                                            "non-finite losses or weights are")


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
    guard: GanGuard = GanGuard()


class Recipe(RecipeBase):
    family: Literal["dcgan"] = "dcgan"
    model: ModelConfig = ModelConfig()
    data: ImageDataConfig = ImageDataConfig()
    train: TrainConfig
    quality: DigitsQualityConfig = DigitsQualityConfig()

    @model_validator(mode="after")
    def _digits_fit(self) -> "Recipe":
        if self.data.source in DIGIT_SETS and self.model.conditional and self.model.num_classes != 10:
            raise ValueError(f"{self.data.source} has 10 classes: set model.num_classes=10")
        return self


    def row_classes(self) -> int | None:
        return self.model.num_classes if self.model.conditional else None
