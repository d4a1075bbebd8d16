"""The diffusion family's network and noise schedules, built from diffusers.

The denoiser is diffusers' `UNet2DModel`, class-conditional through its class
embedding: `num_classes + 1` embeddings, the last one meaning "no label" (the
unconditional branch classifier-free guidance needs, trained by dropping labels).
Its norms are GroupNorm: a row's output never depends on the other rows' values.

Training adds noise with a `DDPMScheduler`; sampling walks a shorter schedule
with DDIM or DPM-Solver++ built from the same configuration, so the betas and the
prediction type are the checkpoint's, never the sampler's guess.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gen_jobs.core.recipes import StrictModel


class ModelConfig(StrictModel):
    image_size: int = Field(16, ge=8, le=2048, description="output side in pixels, a multiple of the U-Net's "
                                                          "downsampling (16, 32, 64 for the bundled digits)")
    channels: Literal[1, 3] = Field(1, description="1 = grayscale, 3 = RGB")
    block_channels: list[int] = Field(default_factory=lambda: [16, 32], min_length=1, max_length=4,
                                      description="channels of each U-Net resolution, from the finest down")
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = Field(False, description="self-attention at the coarsest resolution (costly on CPU)")
    norm_groups: int = Field(8, ge=1, description="GroupNorm groups: divides every entry of block_channels")
    num_classes: int = Field(10, gt=0)
    conditional: bool = Field(True, description="class-conditional U-Net (class embedding), guided by "
                                                "sampling.guidance_scale")

    @model_validator(mode="after")
    def _fits(self) -> "ModelConfig":
        if any(c % self.norm_groups for c in self.block_channels):
            raise ValueError(f"norm_groups {self.norm_groups} must divide every block_channels entry "
                             f"{self.block_channels}")
        if self.image_size % 2 ** (len(self.block_channels) - 1):
            raise ValueError(f"image_size {self.image_size} halves {len(self.block_channels) - 1} times in the U-Net: "
                             f"use fewer block_channels")
        return self


class NoiseConfig(StrictModel):
    train_timesteps: int = Field(1000, ge=10, le=4000)
    beta_schedule: Literal["squaredcos_cap_v2", "scaled_linear", "linear"] = Field(
        "squaredcos_cap_v2", description="the cosine schedule (Nichol & Dhariwal 2021) suits small images")
    prediction_type: Literal["v_prediction", "epsilon"] = Field(
        "v_prediction", description="what the U-Net predicts: v (Salimans & Ho 2022) trains steadier at few steps")


def build_unet(cfg: ModelConfig):
    """An untrained `UNet2DModel` for `cfg` (its weights from torch's current seed)."""
    from diffusers import UNet2DModel

    down = ["DownBlock2D"] * len(cfg.block_channels)
    up = ["UpBlock2D"] * len(cfg.block_channels)
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        block_out_channels=tuple(cfg.block_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=cfg.norm_groups,
        num_class_embeds=cfg.num_classes + 1 if cfg.conditional else None,  # + "no label" (index num_classes)
    )


def training_scheduler(noise: NoiseConfig):
    """The forward process: q(x_t | x_0), and the v target."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=noise.train_timesteps, beta_schedule=noise.beta_schedule,
                         prediction_type=noise.prediction_type, clip_sample=False)


def sampling_scheduler(schedule: dict, kind: Literal["ddim", "dpm_solver"]):
    """A fresh sampling scheduler on the training schedule `schedule` (a scheduler's config: a model trained
    here, `training_scheduler(noise).config`; a pipeline's own). DPM-Solver++ keeps the last model outputs: one
    per walk, never shared."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if kind == "ddim":
        return DDIMScheduler.from_config(schedule, timestep_spacing="trailing")
    return DPMSolverMultistepScheduler.from_config(schedule, algorithm_type="dpmsolver++", solver_order=2,
                                                   timestep_spacing="trailing")
