"""The recipe sections the token-sequence families (gpt, music) share: the decoder's shape and LM training."""

from __future__ import annotations

from pydantic import Field, model_validator

from gen_jobs.core.recipes import GuardConfig, StrictModel


class DecoderConfig(StrictModel):
    """A GPT-2 decoder's shape (transformers.GPT2Config); a family sets its own defaults in a subclass."""

    n_layer: int = Field(4, gt=0, le=96)
    n_head: int = Field(4, gt=0, le=128)
    n_embd: int = Field(128, gt=0, le=16384)
    n_positions: int = Field(128, ge=16, le=32768, description="context length in tokens")
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "DecoderConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class TrainConfig(StrictModel):
    """Training a causal LM on token blocks (gen_jobs.families.lm.training)."""

    epochs: int = Field(gt=0)
    batch_size: int = Field(16, gt=0, description="blocks of n_positions tokens per worker and step")
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay ends at lr * this")
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(5, gt=0)
    max_failures: int = Field(2, ge=0)
    guard: GuardConfig = GuardConfig()
