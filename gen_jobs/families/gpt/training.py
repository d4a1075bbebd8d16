"""Training GPT on the shared harness: DDP, AdamW, linear warm-up then cosine decay.

    raygen train gpt_pydoc           (gen_jobs.train; the loop is gen_jobs.harness)

The tokenizer is trained once in the driver (`prepare`) and handed to every
worker. Each epoch ends with the held-out loss, summed over all workers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gen_jobs import checkpoint
from gen_jobs.families.gpt.data import load_documents, split_documents
from gen_jobs.families.gpt.model import build_model, pack_blocks, save, tokenizer_from_json, train_tokenizer
from gen_jobs.families.gpt.recipe import Recipe
from gen_jobs.harness import Workers


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_ratio` of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))



class TrainingTask:
    """The harness's view of GPT: a DDP step on a slice of the token blocks, held-out loss each epoch."""

    def __init__(self, recipe: Recipe, prepared: dict, workers: Workers):
        import ray.train.torch

        t, cfg = recipe.train, recipe.model
        self.recipe, self.workers = recipe, workers
        self.tokenizer = tokenizer_from_json(prepared["tokenizer"])
        if len(self.tokenizer) > cfg.vocab_size:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens, more than model.vocab_size {cfg.vocab_size}")
        train_docs, held_docs = split_documents(load_documents(recipe.data), recipe.data.held_out)
        self.train_blocks = pack_blocks(train_docs, self.tokenizer, cfg.n_positions)  # N x T
        self.held_blocks = pack_blocks(held_docs, self.tokenizer, cfg.n_positions)[workers.rank:: workers.world]
        self.num_examples = len(self.train_blocks)

        self.model = build_model(cfg)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr, betas=(0.9, 0.95),
        )
        total = max(1, self.num_examples // (t.batch_size * workers.world)) * t.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, t.warmup_steps, total, t.min_lr_ratio)
        )
        self.ddp_model = ray.train.torch.prepare_model(self.model)

    @staticmethod
    def prepare(recipe: Recipe) -> dict:
        """The tokenizer is trained once, in the driver, before any worker starts."""
        train_docs, _ = split_documents(load_documents(recipe.data), recipe.data.held_out)
        return {"tokenizer": train_tokenizer(train_docs, recipe.model.vocab_size).backend_tokenizer.to_str()}

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

    def save(self, folder: Path, info: dict) -> None:
        save(folder, self.recipe, self.model, self.tokenizer, info)

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


def describe_epoch(m: dict, epochs: int) -> str:
    return (
        f"epoch {m['epoch']}/{epochs}  train loss {m['train_loss']:.3f}  held-out loss {m['held_out_loss']:.3f}"
        f"  perplexity {m['held_out_perplexity']:.1f}  ({m['seconds']:.1f} s)"
    )

