"""GPT's model and tokenizer: a HuggingFace `GPT2LMHeadModel` and a byte-level BPE trained here.

A checkpoint is a `save_pretrained` folder (model + tokenizer) plus raygen's
recipe.json; any HuggingFace causal-LM folder works as a checkpoint too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gen_jobs.core import checkpoint
from gen_jobs.families.gpt.recipe import ModelConfig, Recipe

END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(documents: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2's scheme) trained on the corpus: a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer)
    return _wrap(tok)


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )


def tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    return _wrap(Tokenizer.from_str(text))


def pack_blocks(documents: list[str], tokenizer, block: int) -> torch.Tensor:
    """Documents -> one token stream (separated by <|endoftext|>) -> N x block tensor."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n = len(stream) // block
    if n == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one block of {block}")
    return torch.tensor(stream[: n * block], dtype=torch.long).view(n, block)


def build_model(cfg: ModelConfig):
    from gen_jobs.families.lm.training import gpt2_model

    return gpt2_model(cfg, cfg.vocab_size, bos=0, eos=0)


def save(folder: Path, recipe: Recipe, model, tokenizer, info: dict) -> None:
    """A checkpoint: save_pretrained model + tokenizer, plus raygen's recipe and info."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    checkpoint.write(folder, recipe, {}, info)

