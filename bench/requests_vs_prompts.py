"""Rows/s of `raygen generate --requests` (OpenAI batch lines) against `--prompts` on the same prompts.

    .venv/bin/python bench/requests_vs_prompts.py [--rows 500] [--pairs 5]

Both sides write the same text rows from the same gpt_pydoc checkpoint (untrained weights of the
default recipe and a tokenizer trained on its corpus: the cost of a trained one): `--prompts` from
a JSONL file of prompts, `--requests` from one `/v1/completions` line per prompt with no seed and
no settings, so each line is answered with its row's seed and the recipe's sampling, the same work.
Each run is the ShardWriter's whole path in this process (what a Ray Data actor runs: read the
input slice, sample in the recipe's micro-batches, write Parquet), without Ray's start-up, which
both sides share. The runs alternate (A B, B A, ...), since this machine's speed drifts; printed:
each pair's ratio, then the median ratio (requests / prompts; the goal is at least 0.9) and the
spread. The benchmark also checks that both sides wrote the same texts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from pairs import interleaved_ratios, summary

PROMPTS = ["The with statement", "A list comprehension", "The import system", "Exceptions are", "def ", ""]


def make_checkpoint(folder: Path) -> str:
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.gpt.data import load_documents, split_documents
    from gen_jobs.families.gpt.model import build_model, save, train_tokenizer

    recipe = load_recipe("gpt_pydoc")
    train, _ = split_documents(load_documents(recipe.data), recipe.data.held_out)
    torch.manual_seed(0)
    save(folder, recipe, build_model(recipe.model), train_tokenizer(train, recipe.model.vocab_size), {"epoch": 0})
    return str(folder)


def write(checkpoint: str, out: Path, **source) -> float:
    """Seconds to write the whole dataset of `source` with one ShardWriter in this process."""
    from gen_jobs.data.shard_writer import ShardWriter
    from gen_jobs.generate import ANSWERER, GenerateArgs, plan

    planned = plan(GenerateArgs(checkpoint=checkpoint, out=str(out), **source), log=lambda *_: None)
    started = time.perf_counter()
    ShardWriter(planned.identity.model_dump(mode="json"), str(out), planned.micro_batch, "cpu", planned.checkpoint,
                answerer=ANSWERER)({"shard": np.arange(planned.identity.num_shards)})
    return time.perf_counter() - started


def texts(out: Path, requests: bool) -> list[str]:
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    if not requests:
        return table.column("text").to_pylist()
    return [json.loads(r)["choices"][0]["text"] for r in table.column("response").to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core's work, as one ShardWriter actor has
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp / "gpt")
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.rows)]
        (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        (tmp / "requests.jsonl").write_text("".join(json.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": p}}) + "\n"
            for i, p in enumerate(prompts)))
        runs = {"prompts": 0, "requests": 0}

        def rate(source: str) -> float:
            """Rows/s of one whole write of the dataset from --prompts or --requests, into a folder of its own."""
            runs[source] += 1
            out = tmp / f"{source}-{runs[source]}"
            return args.rows / write(checkpoint, out, **{source: str(tmp / f"{source}.jsonl")}, rows_per_shard=args.rows)

        ratios = interleaved_ratios(lambda: rate("requests"), lambda: rate("prompts"), args.pairs,
                                    lambda _, a, b: f"--requests {a:,.1f} rows/s, --prompts {b:,.1f} rows/s")
        same = texts(tmp / "prompts-1", False) == texts(tmp / "requests-1", True)
        print(f"same texts on both sides: {same}")
        print(f"requests / prompts: {summary(ratios)}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
