"""Training GPT on the shared harness: DDP, AdamW, linear warm-up then cosine decay.

    raygen train gpt_pydoc           (gen_jobs.train; the loop is gen_jobs.training.harness)

The tokenizer is trained once in the driver (`prepare`) and handed to every
worker. The optimisation and the held-out loss are gen_jobs.families.lm.training's,
shared with the music family.
"""

from __future__ import annotations

from pathlib import Path

from gen_jobs.families.gpt.data import load_documents, split_documents
from gen_jobs.families.gpt.model import build_model, pack_blocks, save, tokenizer_from_json, train_tokenizer
from gen_jobs.families.gpt.recipe import Recipe
from gen_jobs.families.lm.training import LanguageModelTask
from gen_jobs.training.harness import Workers


class TrainingTask(LanguageModelTask):
    """The harness's view of GPT: the corpus as blocks of n_positions BPE tokens."""

    def __init__(self, recipe: Recipe, prepared: dict, workers: Workers):
        cfg = recipe.model
        self.tokenizer = tokenizer_from_json(prepared["tokenizer"])
        if len(self.tokenizer) > cfg.vocab_size:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens, more than model.vocab_size {cfg.vocab_size}")
        train_docs, held_docs = split_documents(load_documents(recipe.data), recipe.data.held_out)
        super().__init__(recipe, workers, build_model(cfg),
                         train_blocks=pack_blocks(train_docs, self.tokenizer, cfg.n_positions),
                         held_blocks=pack_blocks(held_docs, self.tokenizer, cfg.n_positions))

    @staticmethod
    def prepare(recipe: Recipe) -> dict:
        """The tokenizer is trained once, in the driver, before any worker starts."""
        train_docs, _ = split_documents(load_documents(recipe.data), recipe.data.held_out)
        return {"tokenizer": train_tokenizer(train_docs, recipe.model.vocab_size).backend_tokenizer.to_str()}

    def save(self, folder: Path, info: dict) -> None:
        save(folder, self.recipe, self.model, self.tokenizer, info)
