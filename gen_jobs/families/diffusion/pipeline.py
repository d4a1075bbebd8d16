"""A diffusers pipeline folder made elsewhere as a diffusion checkpoint (`DiffusionPipeline.save_pretrained`).

    raygen generate --checkpoint PIPELINE_FOLDER --prompts prompts.jsonl --out DATASET      (text-to-image)
    raygen generate --checkpoint PIPELINE_FOLDER --num-samples N --out DATASET              (a U-Net pipeline)

raygen reads the folder's model_index.json and its denoiser's config.json into a
recipe (gen_jobs.families.diffusion.recipe.recipe_for_pipeline), loads the pipeline offline with safetensors only
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
from gen_jobs.families.diffusion.model import sampling_scheduler

INDEX_FILE = "model_index.json"

# The pipeline classes raygen samples, by what their rows are made from; others are refused by name.
UNET_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
TEXT_PIPELINES = ("StableDiffusionPipeline",)
# Component libraries a pipeline may name: diffusers and transformers classes only (no other module is imported).
LIBRARIES = ("diffusers", "transformers")
MODEL_CONFIG = "config.json"  # a component folder holding it is a model (diffusers' and transformers' alike):
# it has weights, which must be safetensors, never pickles. Schedulers, tokenizers and feature extractors
# name their configs otherwise (scheduler_config.json, tokenizer_config.json, preprocessor_config.json).


class PipelineConfig(StrictModel):
    """What raygen read of a diffusers pipeline folder made elsewhere (None for a model trained here)."""

    class_name: str = Field(description="model_index.json's _class_name, e.g. StableDiffusionPipeline")
    kind: Literal["unet", "text_to_image"] = Field(description="unet: images from noise (and a class); "
                                                              "text_to_image: images from prompts")
    latent_channels: int = Field(gt=0, description="channels of the noise a row starts from")
    latent_size: int = Field(gt=0, description="side of the noise a row starts from (pixels / the VAE's scale)")


def read_json(uri: str, name: str) -> dict:
    """A JSON file of the pipeline folder `uri`; a clear error if it is missing or damaged."""
    path = storage.join(uri, name)
    if not storage.exists(path):
        raise UserError(f"{path} is missing: a diffusers pipeline folder (DiffusionPipeline.save_pretrained) has it")
    try:
        return json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def weighted_components(uri: str, index: dict) -> list[str]:
    """The components of model_index.json that are models (their folder holds a config.json)."""
    return [name for name, spec in index.items()
            if isinstance(spec, list) and spec[0] is not None and storage.exists(storage.join(uri, name, MODEL_CONFIG))]


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
