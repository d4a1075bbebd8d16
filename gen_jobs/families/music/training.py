"""Training the music model on the shared harness: the LM loop of gen_jobs.families.lm.training over REMI tokens.

    raygen train music_chorales           (gen_jobs.train; the loop is gen_jobs.training.harness)

`prepare` runs once in the driver: it reads the corpus (files that do not parse
are skipped and counted in the log), builds the MidiTok tokenizer, holds out
every k-th piece, tokenises the rest (with each `data.transpose` shift as more
training pieces) and hands the token ids to every worker.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from gen_jobs.families.lm.training import LanguageModelTask
from gen_jobs.families.music.data import load_corpus, split_pieces
from gen_jobs.families.music.model import (
    TOKENIZER_FILE,
    build_model,
    build_tokenizer,
    encode,
    pack_blocks,
    save,
    special_ids,
    tokenizer_from_json,
)
from gen_jobs.families.music.recipe import Recipe
from gen_jobs.training.harness import Workers


class TrainingTask(LanguageModelTask):
    """The harness's view of the music family: pieces as blocks of n_positions REMI tokens."""

    def __init__(self, recipe: Recipe, prepared: dict, workers: Workers):
        self.tokenizer = tokenizer_from_json(prepared["tokenizer"])
        pad, bos, eos = special_ids(self.tokenizer)
        block = recipe.model.n_positions
        super().__init__(recipe, workers, build_model(recipe.model, len(self.tokenizer), pad, bos, eos),
                         train_blocks=pack_blocks(prepared["train"], block, bos, eos),
                         held_blocks=pack_blocks(prepared["held_out"], block, bos, eos))

    @staticmethod
    def prepare(recipe: Recipe) -> dict:
        import symusic

        corpus = load_corpus(recipe.data)
        tokenizer = build_tokenizer(recipe.tokenizer)
        train, held = split_pieces(corpus.midi, recipe.data.held_out)
        train_ids = [encode(tokenizer, m) for m in train]
        for shift in recipe.data.transpose:  # augmentation: the same pieces in other keys
            for m in train:
                shifted = symusic.Score.from_midi(m).shift_pitch(shift)
                train_ids.append(encode(tokenizer, shifted.dumps_midi()))
        tokens = sum(len(ids) for ids in train_ids)
        print(f"music corpus {recipe.data.source}: {len(corpus.midi)} pieces ({len(train)} train"
              f"{f' x {1 + len(recipe.data.transpose)} keys' if recipe.data.transpose else ''}, {len(held)} held out), "
              f"{tokens:,} training tokens, vocabulary {len(tokenizer)}; {len(corpus.skipped)} files skipped"
              + (f" (e.g. {corpus.skipped[0]})" if corpus.skipped else ""), flush=True)
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save(Path(folder) / TOKENIZER_FILE)
            text = (Path(folder) / TOKENIZER_FILE).read_text()
        return {"tokenizer": text, "train": train_ids, "held_out": [encode(tokenizer, m) for m in held],
                "skipped": len(corpus.skipped)}

    def save(self, folder: Path, info: dict) -> None:
        save(folder, self.recipe, self.model, self.tokenizer, info)
