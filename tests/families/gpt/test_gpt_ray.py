"""GPT on the session's Ray cluster: DDP training lowers held-out loss; shards are worker-count independent."""

import json
import math
from pathlib import Path

import pytest
import torch

from gen_jobs.core.recipes import load_recipe
from gen_jobs.families.gpt.data import load_documents, split_documents
from gen_jobs.families.gpt.model import build_model, pack_blocks
from gen_jobs.families.gpt.sampler import Sampler
from gen_jobs.families.lm.training import held_out_loss
from gen_jobs.generate import GenerateArgs, generate
from gen_jobs.verify import problems
from test_gpt import TINY_GPT
from test_ray_pipeline import shard_bytes

TRAIN = [*TINY_GPT, "train.epochs=2", "train.warmup_steps=5", "train.checkpoint_every=1"]


@pytest.fixture(scope="module")
def gpt_trained(ray_cluster, tmp_path_factory) -> str:
    from gen_jobs.train import train

    return train(load_recipe("gpt_pydoc", TRAIN), str(tmp_path_factory.mktemp("gpt_runs")), "tiny-gpt", workers=2, gpu=False)


@pytest.mark.slow
def test_training_lowers_held_out_loss(gpt_trained):
    info = json.loads((Path(gpt_trained) / "raygen.json").read_text())
    assert info["epoch"] == 2
    recipe = load_recipe("gpt_pydoc", TRAIN)
    tokenizer = Sampler(gpt_trained).tokenizer
    _, held = split_documents(load_documents(recipe.data), recipe.data.held_out)
    torch.manual_seed(recipe.train.seed)
    untrained = build_model(recipe.model)
    total, count = held_out_loss(untrained, pack_blocks(held, tokenizer, recipe.model.n_positions), "cpu")
    assert info["metrics"]["held_out_loss"] < total / count - 0.5
    assert info["metrics"]["held_out_perplexity"] == pytest.approx(math.exp(info["metrics"]["held_out_loss"]), rel=0.01)
    assert {"config.json", "model.safetensors", "tokenizer.json", "recipe.json", "train_state.pt"} <= {
        p.name for p in Path(gpt_trained).iterdir()
    }


@pytest.mark.slow
def test_one_and_two_workers_write_identical_text_shards(gpt_trained, tmp_path):
    for workers in (1, 2):
        generate(GenerateArgs(checkpoint=gpt_trained, out=str(tmp_path / str(workers)), num_samples=24,
                              rows_per_shard=8, workers=workers), log=lambda *_: None)
        assert problems(str(tmp_path / str(workers)))[0] == []
    assert shard_bytes(tmp_path / "1") == shard_bytes(tmp_path / "2")
