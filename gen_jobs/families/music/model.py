"""The music model and tokenizer: MidiTok REMI tokens and a HuggingFace `GPT2LMHeadModel`.

A checkpoint is a `save_pretrained` folder (config.json, model.safetensors),
MidiTok's own tokenizer JSON (`music_tokenizer.json`: its parameters and
vocabulary, so the checkpoint alone rebuilds it) and raygen's recipe.json.
Every piece is one token stream: BOS, the REMI tokens of all voices, EOS.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from gen_jobs.core import checkpoint
from gen_jobs.families.music.recipe import ModelConfig, Recipe, TokenizerConfig

TOKENIZER_FILE = "music_tokenizer.json"
SPECIAL_TOKENS = ["PAD", "BOS", "EOS"]


def build_tokenizer(cfg: TokenizerConfig):
    """A MidiTok REMI tokenizer: Bar, Position, Pitch, Duration (and Velocity, Tempo if asked)."""
    import miditok

    return miditok.REMI(miditok.TokenizerConfig(
        pitch_range=(cfg.pitch_low, cfg.pitch_high + 1),
        beat_res={(0, 4): cfg.positions_per_beat, (4, 12): max(1, cfg.positions_per_beat // 2)},
        use_velocities=cfg.use_velocities,
        num_velocities=cfg.num_velocities,
        use_tempos=cfg.use_tempos,
        special_tokens=SPECIAL_TOKENS,
    ))


def tokenizer_from_json(text: str):
    """The tokenizer a checkpoint saved (MidiTok reads its parameters from a file)."""
    import miditok

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / TOKENIZER_FILE
        path.write_text(text)
        return miditok.REMI(params=path)


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(pad, bos, eos) token ids."""
    return tokenizer["PAD_None"], tokenizer["BOS_None"], tokenizer["EOS_None"]


def encode(tokenizer, midi: bytes) -> list[int]:
    """A one-track MIDI file -> its REMI token ids (no BOS/EOS)."""
    import symusic

    sequences = tokenizer(symusic.Score.from_midi(midi))
    sequence = sequences[0] if isinstance(sequences, list) else sequences
    return list(sequence.ids)


def decode(tokenizer, ids: list[int]):
    """REMI token ids (special tokens dropped) -> a symusic Score (one track; empty if no note survives)."""
    import symusic

    pad, bos, eos = special_ids(tokenizer)
    ids = [i for i in ids if i not in (pad, bos, eos)]
    if not ids:
        return symusic.Score(tokenizer.time_division)
    return tokenizer.decode([ids])


def build_model(cfg: ModelConfig, vocab_size: int, pad: int, bos: int, eos: int):
    from gen_jobs.families.lm.training import gpt2_model

    return gpt2_model(cfg, vocab_size, bos=bos, eos=eos, pad=pad)


def save(folder: Path, recipe: Recipe, model, tokenizer, info: dict) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save(folder / TOKENIZER_FILE)
    checkpoint.write(folder, recipe, {}, info)


def pack_blocks(sequences: list[list[int]], block: int, bos: int, eos: int) -> torch.Tensor:
    """Pieces -> BOS piece EOS BOS piece EOS ... -> N x block tensor (the tail that does not fill a block is dropped)."""
    stream: list[int] = []
    for ids in sequences:
        stream.extend([bos, *ids, eos])
    n = len(stream) // block
    if n == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one block of {block}; "
                         "add pieces or lower model.n_positions")
    return torch.tensor(stream[: n * block], dtype=torch.long).view(n, block)
