"""Music sampling: checkpoint -> MIDI pieces, the one implementation Ray Data and Ray Serve share.

    raygen generate --checkpoint out/runs/music_chorales --out DATASET --num-samples N [--audio]

Decoding is gen_jobs.families.lm.decoding's batched KV-cache loop, the text family's own:
token t of a row is picked with `seeding.uniform32(row seed, MUSIC, t)` on the
model's device, so a piece depends only on (checkpoint, primer, settings, seed),
not on the rows beside it. A row starts from BOS, or from BOS and a primer's
first `sampling.primer_bars` bars; it ends at EOS ("stop") or after
max_new_tokens ("length"). Its MIDI file is the primer and continuation.

Primers come in the `prompt` column: the bytes of a MIDI or MusicXML file
(`--prompts` naming files, whose bytes gen_jobs.data.rows reads and digests; Serve's
`primer`), or `corpus:NAME`, a piece of the bundled corpus (`corpus:bach/bwv269`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from gen_jobs.core import checkpoint, seeding
from gen_jobs.core.errors import UserError
from gen_jobs.data.columns import media_column, row_columns, with_features
from gen_jobs.families.lm.decoding import Decoding, decode_steps
from gen_jobs.families.music.analysis import Notes, estimate_key, in_key_share, key_name
from gen_jobs.families.music.audio import find_soundfont, render_wav
from gen_jobs.families.music.data import CORPUS_PREFIX, corpus_piece, parse_primer
from gen_jobs.families.music.model import TOKENIZER_FILE, decode, encode, special_ids, tokenizer_from_json
from gen_jobs.families.music.recipe import Recipe

ROW_SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p")  # optional per-row batch columns


class Sampler:
    """Checkpoint -> pieces. One instance per Ray Data actor or Serve replica.

    __call__ maps {"seed": int64 B, optional "prompt": primer (see above) or None B, or instead
    "prompt_ids": each row's BOS and primer tokens (from prompt_ids), other columns passed through}
    to the same batch plus "midi", "num_notes", "duration_s", "key",
    "tokens", "finish_reason", and "audio" (WAV bytes) when the recipe's audio is on
    (or the batch has a true "want_audio" column, as Serve's wav answers do).
    """

    def __init__(self, checkpoint_uri: str, device: str = "cpu", recipe: Recipe | None = None):
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with checkpoint.LocalCheckpoint(checkpoint_uri, recipe) as ckpt:  # recipe.json is read only when none is given
            self.recipe: Recipe = ckpt.recipe
            tokenizer_file = ckpt.path / TOKENIZER_FILE
            if not tokenizer_file.is_file():
                raise UserError(f"{checkpoint_uri} has no {TOKENIZER_FILE}: it is not a music checkpoint")
            self.tokenizer = tokenizer_from_json(tokenizer_file.read_text())
            self.model = GPT2LMHeadModel.from_pretrained(ckpt.path, local_files_only=True, use_safetensors=True)
        self.pad, self.bos, self.eos = special_ids(self.tokenizer)
        self.bar = self.tokenizer["Bar_None"]
        self.sampling = self.recipe.sampling
        self.device = torch.device(device)
        self.model.eval().requires_grad_(False).to(self.device)
        self.context = self.model.config.n_positions
        audio = self.recipe.audio
        self.soundfont = find_soundfont(audio.soundfont) if audio.enabled or audio.soundfont else None

    def row_settings(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        n = len(batch["seed"])
        settings = {key: list(batch[key]) if key in batch else [getattr(self.sampling, key)] * n for key in ROW_SETTINGS}
        settings["stop"] = [[]] * n
        return settings

    def primer_tokens(self, primer: bytes | str) -> list[int]:
        """A primer's REMI tokens, cut before the bar after its first `sampling.primer_bars` bars."""
        if isinstance(primer, str):
            if not primer.startswith(CORPUS_PREFIX):
                raise UserError(f"a music prompt {primer[:60]!r} is neither a MIDI/MusicXML file nor "
                                f"{CORPUS_PREFIX}NAME (e.g. {CORPUS_PREFIX}bach/bwv269)")
            midi = corpus_piece(primer[len(CORPUS_PREFIX):])
        else:
            midi = parse_primer(bytes(primer))
        ids = encode(self.tokenizer, midi)
        bars = [i for i, t in enumerate(ids) if t == self.bar]
        keep = self.sampling.primer_bars
        return ids[: bars[keep]] if keep is not None and len(bars) > keep else ids

    def prompt_ids(self, primers: list, max_new_tokens: list[int]) -> list[list[int]]:
        """BOS, then the primer's tokens (fitted to the context minus the row's max_new_tokens)."""
        out = []
        for primer, max_new in zip(primers, max_new_tokens):
            room = self.context - int(max_new)
            if room < 1:
                raise UserError(f"max_tokens {max_new} leaves no room in this model's context of {self.context} tokens")
            ids = [self.bos]
            if primer is not None:
                ids += self.primer_tokens(primer)
            if len(ids) > room:
                if self.sampling.long_prompts == "error":
                    raise UserError(f"the primer has {len(ids) - 1} tokens; with max_tokens {max_new} the context of "
                                    f"{self.context} leaves room for {room - 1}: shorten it or set "
                                    "sampling.long_prompts=truncate_left")
                ids = [self.bos] + ids[len(ids) - room + 1:]
            out.append(ids)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        settings = self.row_settings(batch)
        if "prompt_ids" in batch:  # tokenised already (Serve does it once per request, not once per row)
            prompts = [list(ids) for ids in batch["prompt_ids"]]
        else:
            primers = [None if p is None or isinstance(p, float) else p  # (NaN: a null from pandas)
                       for p in (batch["prompt"] if "prompt" in batch else [None] * len(batch["seed"]))]
            prompts = self.prompt_ids(primers, settings["max_new_tokens"])
        rows = None
        for rows in decode_steps(self.model, prompts, np.asarray(batch["seed"]), settings, eos=self.eos,
                                 pad=self.pad, stream=seeding.MUSIC):
            pass
        return self.output(batch, rows, prompts)

    def output(self, batch: dict[str, np.ndarray], rows: list[Decoding], prompts: list[list[int]]) -> dict[str, np.ndarray]:
        """The output columns of a decoded batch (`prompts`: each row's BOS and primer tokens)."""
        want_audio = batch.get("want_audio")
        midi, notes_count, seconds, keys, in_key, tokens, audio = [], [], [], [], [], [], []
        for i, row in enumerate(rows):
            ids = prompts[i][1:] + row.tokens  # the primer's tokens and the continuation
            score = decode(self.tokenizer, ids)
            data = score.dumps_midi()
            notes = Notes.of(score)
            midi.append(data)
            notes_count.append(len(notes))
            seconds.append(round(notes.end(), 3))
            key = estimate_key(notes.pitch_classes())
            keys.append(key_name(key) if len(notes) else None)
            in_key.append(in_key_share(notes, key) if len(notes) else float("nan"))
            tokens.append(np.asarray(ids, dtype=np.int32))
            wanted = self.recipe.audio.enabled or (want_audio is not None and bool(want_audio[i]))
            audio.append(render_wav(data, notes, self.recipe.audio.sample_rate, self.soundfont) if wanted else None)
        out = {
            **{k: v for k, v in batch.items() if k not in ("prompt", "prompt_ids", "want_audio")},
            "midi": _objects(midi),
            "num_notes": np.array(notes_count, dtype=np.int64),
            "duration_s": np.array(seconds, dtype=np.float64),
            "key": _objects(keys),
            "in_key": np.array(in_key, dtype=np.float64),
            "tokens": _objects(tokens),
            "num_primer_tokens": np.array([len(p) - 1 for p in prompts], dtype=np.int64),  # (BOS left out)
            "finish_reason": _objects([row.finish_reason or "length" for row in rows]),
        }
        if any(a is not None for a in audio):  # (None in the rows of a mixed Serve batch that asked for MIDI)
            out["audio"] = _objects(audio)
        return out


def _objects(values: list) -> np.ndarray:
    from gen_jobs.data.columns import object_column

    return object_column(values)


def copied_columns(tokens: list[np.ndarray], primer_tokens: np.ndarray, recipe: Recipe) -> dict[str, pa.Array]:
    """copied_tokens and copy of each piece's continuation (gen_jobs.quality.memorisation.CorpusWindows);
    null when the corpus cannot be read here."""
    from gen_jobs.families.music.quality import corpus_tokens

    corpus = corpus_tokens(recipe.data.model_dump_json(), recipe.tokenizer.model_dump_json())
    copied = [corpus.longest_copied(ids[int(k):].tolist()) if corpus else None for ids, k in zip(tokens, primer_tokens)]
    return {"copied_tokens": pa.array(copied, pa.int64()),
            "copy": pa.array([None if c is None else c >= recipe.quality.copy_tokens for c in copied], pa.bool_())}


def to_table(batch: dict[str, np.ndarray], recipe: Recipe) -> pa.Table:
    """Sampler output -> Arrow: id, seed, midi, num_notes, duration_s, key, in_key, tokens, num_primer_tokens,
    copied_tokens, copy, finish_reason[, audio]."""
    columns = {
        **row_columns(batch),
        "midi": pa.array(list(batch["midi"]), pa.binary()),
        "num_notes": pa.array(batch["num_notes"], pa.int64()),
        "duration_s": pa.array(batch["duration_s"], pa.float64()),
        "key": pa.array(list(batch["key"]), pa.string()),
        # (null for a piece without notes: no key, nothing in it)
        "in_key": pa.array(batch["in_key"], pa.float64(), from_pandas=True),
        "tokens": pa.array([t.tolist() for t in batch["tokens"]], pa.list_(pa.int32())),
        "num_primer_tokens": pa.array(batch["num_primer_tokens"], pa.int64()),
        **copied_columns(list(batch["tokens"]), batch["num_primer_tokens"], recipe),
        "finish_reason": pa.array(list(batch["finish_reason"]), pa.string()),
    }
    if "audio" in batch:
        columns["audio"] = media_column(list(batch["audio"]), [f"{i}.wav" for i in batch["id"]])
    return with_features(pa.table(columns), media={"audio": "Audio"})
