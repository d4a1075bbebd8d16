"""A diffusers pipeline folder made elsewhere as `--checkpoint`: a class-conditional U-Net pipeline and a
text-to-image pipeline with a CLIP text encoder, each built offline from configs (random weights) and saved
with `save_pretrained`, as a user's folder would be; rows that are pure functions of (files, recipe, seed,
prompt), the files' digests in the identity, and clear refusals of what raygen does not load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gen_jobs.core import checkpoint
from gen_jobs.core.errors import UserError
from gen_jobs.families.diffusion.sampler import Sampler, to_table

FEW_STEPS = ["sampling.steps=3", "sampling.chunk=4"]


def clip_tokenizer():
    """A CLIP tokenizer with a byte-level vocabulary and no merges: every character a token."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    words = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={w: i for i, w in enumerate(words)}, merges=[], model_max_length=16)


def save_text_pipeline(folder: Path) -> Path:
    """A tiny StableDiffusionPipeline: CLIP text encoder, a U-Net in a 4-channel latent space, a VAE (8x8
    latents, 16x16 images), a DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    n = len(tokenizer)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                                           bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=16)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(folder, safe_serialization=True)
    return folder


def save_unet_pipeline(folder: Path) -> Path:
    """A tiny DDPMPipeline whose UNet2DModel is class-conditional (4 class embeddings), RGB 16x16."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=8,
                       num_class_embeds=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def text_pipeline(tmp_path_factory) -> Path:
    return save_text_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny-sd")


@pytest.fixture(scope="module")
def unet_pipeline(tmp_path_factory) -> Path:
    return save_unet_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny-ddpm")


def sampler_for(folder: Path, overrides: list[str]) -> Sampler:
    from gen_jobs.core.recipes import apply_overrides, recipe_from_dict

    recipe = checkpoint.read_recipe(str(folder))
    return Sampler(str(folder), "cpu", recipe_from_dict(apply_overrides(recipe.model_dump(mode="json"), overrides)))


def rows(ids, prompts=None, labels=None) -> dict[str, np.ndarray]:
    from gen_jobs.core.row_seed import row_seeds

    ids = np.asarray(ids, dtype=np.int64)
    batch = {"id": ids, "seed": row_seeds(0, ids)}
    if prompts is not None:
        batch["prompt"] = np.array(prompts, dtype=object)
    if labels is not None:
        batch["label"] = np.asarray(labels, dtype=np.int64)
    return batch


def test_a_pipeline_folder_is_read_as_its_own_checkpoint_with_what_it_holds(text_pipeline, unet_pipeline):
    text = checkpoint.read_recipe(str(text_pipeline))
    assert checkpoint.latest(str(text_pipeline)) == str(text_pipeline)
    assert (text.family, text.pipeline.class_name, text.pipeline.kind) == ("diffusion", "StableDiffusionPipeline",
                                                                          "text_to_image")
    assert (text.model.image_size, text.model.channels, text.rows_from("ids")) == (16, 3, "prompts")
    assert text.noise is None and text.sampling.guidance_scale == 7.5  # the pipeline's schedule; diffusers' guidance
    unet = checkpoint.read_recipe(str(unet_pipeline))
    assert (unet.pipeline.kind, unet.model.conditional, unet.row_classes(), unet.rows_from("ids")) == \
        ("unet", True, 4, "ids")


def test_a_text_to_image_row_is_the_same_alone_or_in_any_batch_and_follows_its_prompt(text_pipeline):
    sampler = sampler_for(text_pipeline, FEW_STEPS)
    prompts = ["a red circle", "a blue square", "", "a red circle", "a tree", "a house", "a red circle"]
    batch = sampler(rows(range(7), prompts))["image"]  # 7 rows: two calls of 4, the second padded
    assert batch.shape == (7, 16, 16, 3) and batch.dtype == np.uint8
    for i in (0, 4, 6):
        assert np.array_equal(sampler(rows([i], [prompts[i]]))["image"][0], batch[i])
    assert not np.array_equal(sampler(rows([0], ["a blue square"]))["image"][0], batch[0])  # the prompt steers
    assert not np.array_equal(batch[0], batch[3])  # same prompt, another row: another seed
    steered = sampler_for(text_pipeline, FEW_STEPS + ["sampling.negative_prompt=blurry"])
    assert not np.array_equal(steered(rows([0], [prompts[0]]))["image"][0], batch[0])


def test_a_text_to_image_pipeline_call_whose_rows_all_left_is_not_made(text_pipeline):
    """Serve's step batches: a text-to-image step is one pipeline call of `sampling.chunk` (4) rows."""
    sampler = sampler_for(text_pipeline, FEW_STEPS)
    prompts = ["a red circle", "a blue square", "", "a tree", "a house", "a boat", "a red circle"]
    whole = sampler(rows(range(7), prompts))["image"]
    calls = []
    hook = sampler.pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:
        stream = sampler.stream(rows(range(7), prompts))
        states = next(stream)  # the first call made: rows 0-3
        for row in states[4:]:  # the second call's clients leave before it is made
            row.finish_reason = "cancelled"
        *_, states = stream
    finally:
        hook.remove()
    assert calls == [8] * 3  # one call of 3 steps, on 4 rows and their 4 unguided twins: not 6
    assert [row.finish_reason for row in states] == ["stop"] * 4 + ["cancelled"] * 3
    assert all(np.array_equal(row.image, whole[i]) for i, row in enumerate(states[:4]))
    assert np.array_equal(sampler.output(rows(range(7), prompts), states)["image"][:4], whole[:4])


def test_a_class_conditional_unet_pipeline_draws_or_takes_labels_the_same_alone_or_in_a_batch(unet_pipeline):
    sampler = sampler_for(unet_pipeline, FEW_STEPS)
    out = sampler(rows(range(6), labels=[-1, -1, 2, 2, -1, 3]))
    assert set(out["label"]) <= {0, 1, 2, 3} and list(out["label"][[2, 3, 5]]) == [2, 2, 3]
    alone = sampler(rows([5], labels=[3]))
    assert np.array_equal(alone["image"][0], out["image"][5])
    assert not np.array_equal(sampler(rows([5], labels=[0]))["image"][0], out["image"][5])  # the label steers
    table = to_table(out, sampler.recipe)
    assert table.column_names == ["id", "seed", "label", "image"]  # no digits figures: not a bundled digit set


def test_the_identity_digest_covers_every_file_of_the_folder(text_pipeline, tmp_path):
    copy = Path(shutil.copytree(text_pipeline, tmp_path / "copy"))
    before = checkpoint.pin(str(copy)).sha256
    assert before == checkpoint.pin(str(text_pipeline)).sha256  # the files, not where they are
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "beta_end": 0.02}))
    assert checkpoint.pin(str(copy)).sha256 != before


def test_a_pipeline_folder_on_s3_is_pinned_and_samples_as_the_local_one(s3_server, text_pipeline):
    """What `raygen generate --checkpoint s3://...` does: pin the folder's files once, sample from a copy."""
    from gen_jobs.core import storage

    for path in sorted(p for p in text_pipeline.rglob("*") if p.is_file()):
        storage.write_bytes_atomic(f"s3://raygen/pipelines/tiny-sd/{path.relative_to(text_pipeline)}", path.read_bytes())
    pinned = checkpoint.pin(checkpoint.latest("s3://raygen/pipelines/tiny-sd"))
    local = checkpoint.pin(str(text_pipeline))
    assert pinned.sha256 == local.sha256 and pinned.recipe.pipeline == local.recipe.pipeline
    recipe = pinned.recipe.model_copy(update={"sampling": pinned.recipe.sampling.model_copy(update={"steps": 3,
                                                                                                      "chunk": 4})})
    with checkpoint.materialise(pinned) as folder:
        from_s3 = Sampler(folder, "cpu", recipe)
    batch = rows([0, 1], ["a red circle", "a tree"])
    assert np.array_equal(from_s3(batch)["image"], sampler_for(text_pipeline, FEW_STEPS)(batch)["image"])


@pytest.mark.parametrize("change, says", [
    (lambda f: _edit_index(f, _class_name="FluxPipeline"), "holds a 'FluxPipeline'"),
    (lambda f: _edit_index(f, vae=["my_module", "MyVAE"]), "component vae comes from 'my_module'"),
    (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").rename(f / "unet" / "diffusion_pytorch_model.bin"),
     "unet has no .safetensors weights"),
    (lambda f: (f / "unet" / "config.json").unlink(), "unet/config.json is missing"),
])
def test_a_pipeline_raygen_does_not_load_is_refused_before_anything_runs(text_pipeline, tmp_path, change, says):
    copy = Path(shutil.copytree(text_pipeline, tmp_path / "copy"))
    change(copy)
    with pytest.raises(UserError, match=says):
        checkpoint.pin(str(copy))


def _edit_index(folder: Path, **changes) -> None:
    index = folder / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), **changes}))


def test_a_guided_or_noisy_setting_the_pipeline_cannot_honour_says_what_to_keep(text_pipeline, unet_pipeline):
    from gen_jobs.core.recipes import apply_overrides, recipe_from_dict

    def recipe(folder, *overrides):
        return recipe_from_dict(apply_overrides(checkpoint.read_recipe(str(folder)).model_dump(mode="json"),
                                                list(overrides)))

    with pytest.raises(UserError, match="keep sampling.guidance_scale=1"):
        recipe(unet_pipeline, "sampling.guidance_scale=2")
    with pytest.raises(UserError, match="keep sampling.eta=0"):
        recipe(text_pipeline, "sampling.scheduler=ddim", "sampling.eta=1")
    with pytest.raises(UserError, match="negative_prompt applies to text-to-image pipelines only"):
        recipe(unet_pipeline, "sampling.negative_prompt=blurry")


def test_serve_answers_a_prompt_with_the_dataset_row_of_the_same_seed_and_prompt(text_pipeline):
    """The images route's own code (serving.apis.images: rows, then respond) on the pipeline's Sampler."""
    import asyncio
    import base64

    from gen_jobs.data.images import encode_png
    from serving.apis.images import ImageRequest, respond, rows as request_rows
    from serving.config import Limits

    sampler = sampler_for(text_pipeline, FEW_STEPS)
    request = ImageRequest(model="sd", prompt="a red circle", seed=41, n=2)
    out = sampler(asyncio.run(request_rows(sampler, request, Limits())))
    answer = respond(sampler, request, out, "sd")
    dataset = sampler(rows([0, 1], ["a red circle"] * 2) | {"seed": np.array([41, 42])})
    assert [base64.b64decode(d["b64_json"]) for d in answer["data"]] == encode_png(dataset["image"])
    assert [d["seed"] for d in answer["data"]] == [41, 42] and "label" not in answer["data"][0]


@pytest.mark.slow
def test_raygen_generate_draws_a_prompts_dataset_from_a_pipeline_folder(ray_cluster, text_pipeline, unet_pipeline,
                                                                       tmp_path):
    """`raygen generate --checkpoint FOLDER --prompts FILE`, as a user types it in a folder of their own."""
    from conftest import read_rows, run_cli
    from gen_jobs.data.manifest import read_manifest
    from gen_jobs.verify import problems

    shutil.copytree(text_pipeline, tmp_path / "tiny-sd")
    shutil.copytree(unet_pipeline, tmp_path / "tiny-ddpm")
    prompts = ["a red circle", "a blue square", "a tree"]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    done = run_cli("generate", "--checkpoint", "tiny-sd", "--prompts", "prompts.jsonl", "--samples-per-prompt", "2",
                   "--out", "sd-rows", "--set", "sampling.steps=3", "--set", "sampling.chunk=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert problems(str(tmp_path / "sd-rows"))[0] == []
    table = read_rows(tmp_path / "sd-rows")
    assert table.column("prompt").to_pylist() == [p for p in prompts for _ in range(2)]
    manifest = read_manifest(str(tmp_path / "sd-rows"))
    assert manifest.checkpoint_sha256 == checkpoint.pin(str(text_pipeline)).sha256  # every file of the folder
    sampler = sampler_for(text_pipeline, FEW_STEPS)
    direct = to_table(sampler(rows(range(6), table.column("prompt").to_pylist())
                              | {"seed": np.asarray(table.column("seed").to_pylist())}), sampler.recipe)
    assert table.column("image").to_pylist() == direct.column("image").to_pylist()

    done = run_cli("generate", "--checkpoint", "tiny-ddpm", "--num-samples", "5", "--labels", "2", "--out",
                   "ddpm-rows", "--set", "sampling.steps=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_rows(tmp_path / "ddpm-rows").column("label").to_pylist() == [2] * 5
    refused = run_cli("generate", "--checkpoint", "tiny-ddpm", "--prompts", "prompts.jsonl", "--out", "no", cwd=tmp_path)
    assert refused.returncode != 0 and "--prompts needs a model that" in refused.stderr
