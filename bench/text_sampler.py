"""New tokens/s of raygen's GPT sampler vs transformers' own `model.generate()`.

    .venv/bin/python bench/text_sampler.py [--device cpu|cuda] [--batch-sizes 8 64] [--new-tokens 64]
        [--set model.n_layer=12 ...] [--tokenizer-vocab N]     # e.g. GPT-2 small on a GPU

Both sides decode the same prompts with the same model (the demo-sized
`gpt_pydoc` architecture, random weights: the cost does not depend on them),
the same settings (temperature 0.8, top-p 0.95, a KV cache, no early stop) and
the same batch size, in one process. Prints how many of 32 rows decode differently
alone than in a mixed batch, then one line per batch size:

    batch invariance: <F> of 32 rows differ alone vs in a batch of 32
    batch 8: raygen <tok/s> new tokens/s vs generate() <tok/s>, ratio <R>
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = ["The", "A list is", "def f(x):", "Exceptions are", "The with statement", "Numbers", "Use", "If the"]


def make_checkpoint(folder: Path, overrides: list[str], tokenizer_vocab: int | None = None) -> str:
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.gpt.data import load_documents
    from gen_jobs.families.gpt.model import build_model, save as save_gpt, train_tokenizer

    recipe = load_recipe("gpt_pydoc", overrides)
    # A tokenizer smaller than the model's vocabulary is fine (GPT-2's 50,257 would not train on this corpus).
    tokenizer = train_tokenizer(load_documents(recipe.data), tokenizer_vocab or recipe.model.vocab_size)
    torch.manual_seed(0)
    save_gpt(folder, recipe, build_model(recipe.model), tokenizer, {"epoch": 0})
    return str(folder)


def bench_raygen(sampler, prompts: list[str], new_tokens: int) -> float:
    seeds = np.arange(len(prompts))
    started = time.perf_counter()
    out = sampler({"seed": seeds, "prompt": np.array(prompts, dtype=object)})
    seconds = time.perf_counter() - started
    return int(out["num_tokens"].sum()) / seconds


def bench_generate(sampler, prompts: list[str], new_tokens: int) -> float:
    tok = sampler.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True).to(sampler.device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = sampler.model.generate(
            **enc, do_sample=True, temperature=0.8, top_p=0.95, top_k=0, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, pad_token_id=tok.eos_token_id,
        )
    if out.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return (out.shape[1] - enc["input_ids"].shape[1]) * len(prompts) / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (model size)")
    p.add_argument("--tokenizer-vocab", type=int, help="train a smaller tokenizer than the model's vocabulary")
    args = p.parse_args()

    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.gpt.sampler import Sampler

    # min_new_tokens on the generate() side and no end-of-text here: both decode exactly new_tokens.
    overrides = [f"sampling.max_new_tokens={args.new_tokens}", "sampling.temperature=0.8", "sampling.top_p=0.95", *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "gpt", overrides, args.tokenizer_vocab)
        recipe = load_recipe("gpt_pydoc", overrides)
        sampler = Sampler(ckpt, args.device, recipe)
        sampler.eos = -1  # never stop early, like min_new_tokens on the other side
        # Batch invariance: each row decoded alone vs the same row in a batch of mixed prompts.
        mixed = [PROMPTS[i % len(PROMPTS)] * (1 + i % 3) for i in range(32)]
        seeds = np.arange(len(mixed))
        together = sampler({"seed": seeds, "prompt": np.array(mixed, dtype=object)})["text"]
        alone = [sampler({"seed": seeds[i: i + 1], "prompt": np.array(mixed[i: i + 1], dtype=object)})["text"][0]
                 for i in range(len(mixed))]
        flips = sum(a != b for a, b in zip(alone, together))
        print(f"batch invariance: {flips} of {len(mixed)} rows differ alone vs in a batch of {len(mixed)}")
        for batch in args.batch_sizes:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
            bench_raygen(sampler, prompts[:2], 4), bench_generate(sampler, prompts[:2], 4)  # warm-up
            ours = bench_raygen(sampler, prompts, args.new_tokens)
            theirs = bench_generate(sampler, prompts, args.new_tokens)
            print(f"batch {batch}: raygen {ours:,.0f} new tokens/s vs generate() {theirs:,.0f} new tokens/s, ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
