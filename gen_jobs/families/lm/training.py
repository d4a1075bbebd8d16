"""Training a causal language model on token blocks: what the text and music families share.

    used by gen_jobs.families.gpt.training and gen_jobs.families.music.training
    (both run by gen_jobs.training.harness: `raygen train gpt_pydoc`, `raygen train music_chorales`)

`LanguageModelTask` is the harness's TrainingTask for any HuggingFace causal LM
fed N x T blocks of token ids: DDP, AdamW (no decay on biases and norms),
linear warm-up then cosine decay, gradient clipping, and the held-out loss
summed over all workers at the end of each epoch. A family subclasses it with
its own data (`__init__` builds the model and blocks), `prepare` and `save`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gen_jobs.core import checkpoint
from gen_jobs.training.harness import Workers


def gpt2_model(cfg, vocab_size: int, bos: int, eos: int, pad: int | None = None):
    """A `GPT2LMHeadModel` of `cfg`'s size (n_layer, n_head, n_embd, n_positions, dropout) over `vocab_size` tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    ))


def describe_epoch(m: dict, epochs: int) -> tuple[str, list[str]]:
    """The training log's line for one epoch of a language model (no warnings of its own)."""
    line = (f"epoch {m['epoch']}/{epochs}  train loss {m['train_loss']:.3f}  held-out loss {m['held_out_loss']:.3f}"
            f"  perplexity {m['held_out_perplexity']:.1f}  ({m['seconds']:.1f} s)")
    return line, []


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_ratio` of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LanguageModelTask:
    """A DDP step on a slice of the token blocks; held-out loss each epoch (recipe.train: gpt's TrainConfig)."""

    def __init__(self, recipe, workers: Workers, model, train_blocks: torch.Tensor, held_blocks: torch.Tensor):
        import ray.train.torch

        t = recipe.train
        self.recipe, self.workers, self.model = recipe, workers, model
        self.train_blocks = train_blocks  # N x T
        self.held_blocks = held_blocks[workers.rank:: workers.world]  # this worker's share of the held-out blocks
        self.num_examples = len(train_blocks)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr, betas=(0.9, 0.95),
        )
        total = max(1, self.num_examples // (t.batch_size * workers.world)) * t.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, t.warmup_steps, total, t.min_lr_ratio)
        )
        self.ddp_model = ray.train.torch.prepare_model(model)

    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        self.ddp_model.train()
        batch = self.train_blocks[indices].to(self.workers.device)  # B x T
        loss = self.ddp_model(input_ids=batch, labels=batch).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.ddp_model.parameters(), self.recipe.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {"train_loss": loss.item()}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        total, count = self.workers.all_reduce_sum(
            torch.tensor(held_out_loss(self.model, self.held_blocks, self.workers.device), dtype=torch.float64)
        ).tolist()
        loss = total / max(count, 1)
        return {
            "held_out_loss": round(loss, 4),
            "held_out_perplexity": round(math.exp(min(loss, 50)), 2),
            "lr": self.scheduler.get_last_lr()[0],
        }

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def train_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load(self, folder: Path, state: dict) -> None:
        load_weights_strictly(self.model, checkpoint.load_state(folder, "model"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def load_weights_strictly(model, state: dict) -> None:
    """Load a save_pretrained state dict; every weight must match, except tied ones saved once.

    save_pretrained leaves out lm_head.weight when it is tied to the token
    embedding, so plain strict=True would fail; anything else missing or
    unexpected means the checkpoint is not this model's, and is an error.
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    wrong = sorted(set(missing) - tied) + sorted(unexpected)
    if wrong:
        raise ValueError(f"the checkpoint's weights do not fit this model: {', '.join(wrong[:5])}"
                         + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""))
    model.tie_weights()


@torch.no_grad()
def held_out_loss(model, blocks: torch.Tensor, device) -> tuple[float, float]:
    """(sum of per-token losses, token count) over `blocks` (N x T)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), 16):
        batch = blocks[i: i + 16].to(device)
        logits = model(input_ids=batch).logits[:, :-1]  # B x (T-1) x V
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += batch[:, 1:].numel()
    return total, float(count)
