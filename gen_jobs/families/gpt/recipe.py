"""The GPT family's recipe: model size, corpus, training and sampling settings.

`recipe_for_pretrained` describes a user's own HuggingFace causal-LM folder
(one without raygen's recipe.json), so it can be sampled and served too.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, model_validator

from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import RecipeBase, StrictModel
from gen_jobs.families.gpt.data import TextDataConfig
from gen_jobs.families.lm.config import DecoderConfig, TrainConfig


class ModelConfig(DecoderConfig):
    """A GPT-2 decoder and the size of the BPE vocabulary trained for it."""

    vocab_size: int = Field(2048, ge=260, le=262144, description="BPE vocabulary trained on the corpus")


class SamplingConfig(StrictModel):
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.8, ge=0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 = off")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    stop: list[str] = Field(default_factory=list, description="strings that end a sample")
    long_prompts: Literal["truncate_left", "error"] = Field(
        "truncate_left", description="prompts longer than the context: keep their end (with a warning) or refuse"
    )


class QualityConfig(StrictModel):
    copy_words: int = Field(32, ge=8, description="a sample with a run of this many words found verbatim in the "
                                                    "training corpus is flagged as a copy (column `copy`)")


class Recipe(RecipeBase):
    family: Literal["gpt"] = "gpt"
    model: ModelConfig = ModelConfig()
    data: TextDataConfig = TextDataConfig()
    train: TrainConfig
    sampling: SamplingConfig = SamplingConfig()
    quality: QualityConfig = QualityConfig()

    @model_validator(mode="after")
    def _room_to_generate(self) -> "Recipe":
        if self.sampling.max_new_tokens >= self.model.n_positions:
            raise ValueError(
                f"sampling.max_new_tokens ({self.sampling.max_new_tokens}) must be below the context "
                f"length model.n_positions ({self.model.n_positions})"
            )
        return self


def recipe_for_pretrained(uri: str) -> Recipe:
    """A recipe describing a user's HuggingFace causal-LM folder (no raygen recipe.json).

    Sizes come from its config.json; training settings are placeholders (it was not
    trained here); sampling uses this family's defaults, overridable with --set.
    """
    from gen_jobs.core import storage

    try:
        config = json.loads(storage.read_bytes(storage.join(uri, "config.json")))
    except json.JSONDecodeError as e:
        raise UserError(f"{uri}/config.json is not valid JSON ({e})") from e
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"{uri} holds a {model_type!r} model, not a causal language model; raygen's text family needs one")
    cfg = AutoConfig.for_model(**config)
    context = getattr(cfg, "max_position_embeddings", None) or 1024
    model = ModelConfig(
        n_layer=cfg.num_hidden_layers,
        n_head=cfg.num_attention_heads,
        n_embd=cfg.hidden_size,
        n_positions=context,
        vocab_size=max(cfg.vocab_size, 260),
        dropout=0.0,
    )
    sampling = SamplingConfig(max_new_tokens=min(SamplingConfig().max_new_tokens, context // 2))
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "pretrained"
    return Recipe(name=name, model=model, train=TrainConfig(epochs=1), sampling=sampling)

