"""Batched autoregressive decoding with per-row noise, for every token-sequence family.

    used by gen_jobs.families.gpt.sampler (text), and by the music family next

`decode_steps` runs a causal LM (any HuggingFace model with a KV cache) over
left-padded prompts and yields every row's state after each step. Token t of
row r is picked by `pick_tokens` from r's own logits, settings and one
uniform number, `seeding.uniform32(seed_r, stream, t)`, computed on the
model's device: decoding needs no host RNG, and a row's tokens never depend
on the rows beside it (up to floating-point differences between batch shapes
in the model itself, measured by bench/text_sampler.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from gen_jobs.core import seeding


@dataclass
class Decoding:
    """One row's decoding so far: its new token ids and, once ended, why."""

    prompt_tokens: int  # 0 for an empty prompt (decoding starts from the end-of-text token)
    stop: list[str]  # strings that end this row (text families)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # None while running, then "stop" or "length"
    logprob: float = 0.0  # the model's own log-probability (temperature 1, no filtering) of `tokens`

    def perplexity(self) -> float:
        """exp(-mean log-probability) of the new tokens under the model itself; NaN without tokens."""
        return math.exp(-self.logprob / len(self.tokens)) if self.tokens else math.nan

    def snapshot(self) -> "Decoding":
        """A copy that later decoding steps do not change."""
        return replace(self, tokens=list(self.tokens))


def pick_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: torch.Tensor | float,
                top_k: torch.Tensor | int, top_p: torch.Tensor | float) -> torch.Tensor:
    """Next token per row (logits B x V float32) by inverse CDF of the filtered distribution.

    temperature, top_k and top_p are per row (B) or one value for all; temperature
    0 is greedy, top_k 0 and top_p 1 are off. Each row only uses its own logits,
    settings and uniform number, so rows never influence each other.
    """
    b, v = logits.shape
    temperature, top_k, top_p = (torch.as_tensor(x, device=logits.device).expand(b) for x in (temperature, top_k, top_p))
    greedy = temperature == 0
    probs = torch.softmax(logits / torch.where(greedy, 1.0, temperature).unsqueeze(1), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(v, device=logits.device).unsqueeze(0)  # 1 x V
    sorted_probs[(top_k.unsqueeze(1) > 0) & (rank >= top_k.unsqueeze(1))] = 0
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
    sorted_probs[(top_p.unsqueeze(1) < 1) & (before >= top_p.unsqueeze(1))] = 0
    cdf = sorted_probs.cumsum(dim=-1)
    target = uniforms.unsqueeze(1) * cdf[:, -1:]  # B x 1, within the kept mass
    picked = torch.searchsorted(cdf, target, right=True).clamp(max=v - 1)  # B x 1
    return torch.where(greedy, logits.argmax(dim=-1), order.gather(1, picked).squeeze(1))


@torch.inference_mode()
def decode_steps(model, prompt_ids: list[list[int]], seeds: np.ndarray, settings: dict[str, list], *, eos: int,
                 pad: int, stream: int, stopped: Callable[[Decoding], bool] = lambda row: False) -> Iterator[list[Decoding]]:
    """Decode a batch with a KV cache, yielding the rows (the same objects, updated) after every step.

    settings: per-row lists of max_new_tokens, temperature, top_k, top_p and stop.
    A row ends with "stop" at `eos` (not kept) or when `stopped(row)` says so,
    or "length" after its max_new_tokens steps; the batch runs until all have ended.
    """
    device = next(model.parameters()).device
    b = len(prompt_ids)
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((b, width), pad, dtype=torch.long)  # B x W, padding masked out below
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, ids in enumerate(prompt_ids):  # left padding: every prompt ends at column width-1
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    row_seeds = seeding.seed_tensor(seeds, device)  # B
    # Token picking runs where the logits are (B x V never leaves the GPU).
    temperature = torch.tensor(settings["temperature"], dtype=torch.float32, device=device)
    top_k = torch.tensor(settings["top_k"], dtype=torch.long, device=device)
    top_p = torch.tensor(settings["top_p"], dtype=torch.float32, device=device)
    max_new = [int(m) for m in settings["max_new_tokens"]]
    rows = [Decoding(prompt_tokens=len(ids) if ids != [eos] else 0, stop=list(stop))
            for ids, stop in zip(prompt_ids, settings["stop"])]
    cache = None
    step_ids = input_ids
    for step in range(max(max_new)):
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
        result = model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                       cache=cache, use_cache=True, logits_to_keep=1)
        cache = result.cache  # keys/values of every position so far: only new tokens are fed
        logits = result.logits[:, -1, :].float()  # B x V
        uniforms = seeding.uniform32(row_seeds, stream, step)  # B, on the device
        next_ids = pick_tokens(logits, uniforms, temperature, top_k, top_p)  # B
        picked = next_ids.tolist()
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, next_ids.unsqueeze(1)).squeeze(1).tolist()  # B
        for i, row in enumerate(rows):
            if row.finish_reason is not None:
                continue
            if picked[i] == eos:
                row.finish_reason = "stop"
                continue
            row.tokens.append(picked[i])
            row.logprob += logprobs[i]
            if stopped(row):
                row.finish_reason = "stop"
            elif step + 1 >= max_new[i]:
                row.finish_reason = "length"
        yield rows
        if all(row.finish_reason is not None for row in rows):
            return
        step_ids = next_ids.view(b, 1)
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], dim=1)
