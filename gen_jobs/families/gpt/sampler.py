"""GPT sampling: checkpoint -> text, the one implementation Ray Data and Ray Serve share.

    raygen generate --checkpoint out/runs/gpt_pydoc --out DATASET (--num-samples N | --prompts URI)

Decoding is gen_jobs.families.lm.decoding's batched KV-cache loop; token t of a row is
picked with the uniform `seeding.uniform32(row seed, TOKEN, t)`, computed on
the model's device. A row's text therefore depends only on (checkpoint,
prompt, sampling settings, seed), not on the rows that share its batch, up
to floating-point differences between batch shapes (measured in the tests
and by bench/text_sampler.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

from gen_jobs.core import checkpoint, seeding
from gen_jobs.core.errors import UserError
from gen_jobs.data.columns import row_columns, with_features
from gen_jobs.families.gpt.recipe import Recipe
from gen_jobs.families.lm.decoding import Decoding, decode_steps

ROW_SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "stop")  # optional per-row batch columns


class PromptTooLong(UserError):
    """A prompt that does not fit the context with its max_new_tokens; `tokens`: how many it has."""

    def __init__(self, message: str, tokens: int):
        super().__init__(message)
        self.tokens = tokens


class Sampler:
    """Checkpoint -> text. One instance per Ray Data actor or Serve replica.

    __call__ maps a batch {"seed": int64 B, optional "prompt": str-or-None B (and optionally
    "prompt_ids": its token ids, from encode_prompts), other columns passed through} to the same batch plus "prompt", "text",
    "num_prompt_tokens", "num_tokens", "perplexity" (of the new tokens under the model) and
    "finish_reason" ("stop" or "length").
    A batch may carry per-row sampling settings in the columns ROW_SETTINGS
    (Serve does: each request brings its own); absent columns take the recipe's.
    `stream` yields the same rows step by step, for streaming responses.
    """

    def __init__(self, checkpoint_uri: str, device: str = "cpu", recipe: Recipe | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-actor "Loading weights" bars only garble the job log
        with checkpoint.LocalCheckpoint(checkpoint_uri, recipe) as ckpt:  # recipe.json is read only when none is given
            self.recipe: Recipe = ckpt.recipe
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(ckpt.path, local_files_only=True)
                self.model = AutoModelForCausalLM.from_pretrained(ckpt.path, local_files_only=True, use_safetensors=True)
            except (OSError, ValueError) as e:
                raise UserError(f"{checkpoint_uri} is not a causal language model folder ({e})") from e
        vocab = self.model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > vocab:
            raise UserError(
                f"{checkpoint_uri}: the tokenizer has {len(self.tokenizer)} tokens but the model only {vocab}; "
                "they do not belong together"
            )
        self.sampling = self.recipe.sampling
        self.device = torch.device(device)
        self.model.eval().requires_grad_(False).to(self.device)
        self.context = self.model.config.max_position_embeddings  # GPT-2's n_positions, by its attribute map
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos

    # ------------------------------------------------------------ prompts

    def encode_prompts(self, prompts: list[str | None], max_new_tokens: list[int] | None = None,
                       long_prompts: str | None = None) -> list[list[int]]:
        """Token ids per prompt (None -> just <|endoftext|>), fitted to the context.

        A prompt may use the context minus its row's max_new_tokens; longer ones
        keep their end or raise UserError, as `long_prompts` (default: the recipe's) says.
        """
        long_prompts = long_prompts or self.sampling.long_prompts
        max_new_tokens = max_new_tokens or [self.sampling.max_new_tokens] * len(prompts)
        out = []
        for prompt, max_new in zip(prompts, max_new_tokens):
            room = self.context - max_new
            if room < 1:
                raise UserError(f"max_tokens {max_new} leaves no room for a prompt in this model's context of {self.context} tokens")
            ids = [self.eos] if prompt is None else self.tokenizer(prompt, add_special_tokens=False)["input_ids"] or [self.eos]
            if len(ids) > room:
                if long_prompts == "error":
                    raise PromptTooLong(
                        f"a prompt has {len(ids)} tokens; with max_new_tokens {max_new} the context of "
                        f"{self.context} leaves room for {room}: shorten it or set sampling.long_prompts=truncate_left",
                        tokens=len(ids))
                ids = ids[-room:]
            out.append(ids)
        return out

    def row_settings(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """Per-row sampling settings: the batch's ROW_SETTINGS columns, else the recipe's values."""
        n = len(batch["seed"])
        return {key: list(batch[key]) if key in batch else [getattr(self.sampling, key)] * n for key in ROW_SETTINGS}

    @staticmethod
    def _prompts(batch: dict[str, np.ndarray]) -> list[str | None]:
        prompts = list(batch["prompt"]) if "prompt" in batch else [None] * len(batch["seed"])
        return [None if p is None or (isinstance(p, float) and math.isnan(p)) else str(p) for p in prompts]

    # ------------------------------------------------------------ text

    def decode(self, tokens: list[int]) -> str:
        # No clean-up of spaces: decoding must be prefix-stable for streaming.
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def final_text(self, row: Decoding) -> tuple[str, str]:
        """(text, finish_reason) of an ended row: decoded and cut at the first stop string."""
        text = self.decode(row.tokens)
        cuts = [text.index(s) for s in row.stop if s and s in text]
        if cuts:
            return text[: min(cuts)], "stop"
        return text, row.finish_reason or "length"

    def visible_text(self, row: Decoding) -> str:
        """The part of a running row's text that no later token can change (a prefix of its final text).

        Held back: a stop string's possible beginning at the end, and an
        incomplete UTF-8 character (decoded as U+FFFD) that the next byte completes.
        """
        if row.finish_reason is not None:
            return self.final_text(row)[0]
        text = self.decode(row.tokens)
        cuts = [text.index(s) for s in row.stop if s and s in text]
        if cuts:
            return text[: min(cuts)]
        hold = max((len(s) for s in row.stop), default=1) - 1
        text = text[: max(len(text) - hold, 0)]
        return text.rstrip("\ufffd")

    # ------------------------------------------------------------ sampling

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = None
        for rows in self.stream(batch):
            pass
        return self.output(batch, rows)

    def stream(self, batch: dict[str, np.ndarray]) -> Iterator[list[Decoding]]:
        """Decode a batch, yielding its rows' state after every step (the same objects, updated)."""
        settings = self.row_settings(batch)
        if "prompt_ids" in batch:  # tokenised already (Serve does it once per request, when it checks the length)
            prompt_ids = [list(ids) for ids in batch["prompt_ids"]]
        else:
            prompt_ids = self.encode_prompts(self._prompts(batch), settings["max_new_tokens"])
        return self.decode_steps(prompt_ids, np.asarray(batch["seed"]), settings)

    def output(self, batch: dict[str, np.ndarray], rows: list[Decoding]) -> dict[str, np.ndarray]:
        """The output columns of a decoded batch (`rows`: the last state `stream` yielded)."""
        texts, reasons = zip(*(self.final_text(row) for row in rows)) if rows else ((), ())
        return {
            **{key: column for key, column in batch.items() if key != "prompt_ids"},
            "prompt": np.array(self._prompts(batch), dtype=object),
            "text": np.array(texts, dtype=object),
            "num_prompt_tokens": np.array([row.prompt_tokens for row in rows], dtype=np.int64),
            "num_tokens": np.array([len(row.tokens) for row in rows], dtype=np.int64),
            "perplexity": np.array([row.perplexity() for row in rows], dtype=np.float64),
            "finish_reason": np.array(reasons, dtype=object),
        }

    def decode_steps(self, prompt_ids: list[list[int]], seeds: np.ndarray, settings: dict[str, list]) -> Iterator[list[Decoding]]:
        """Batched decoding, one yield per step (gen_jobs.families.lm.decoding); rows also end at their stop strings."""
        return decode_steps(self.model, prompt_ids, seeds, settings, eos=self.eos, pad=self.pad,
                            stream=seeding.TOKEN, stopped=self._hit_stop)

    def _hit_stop(self, row: Decoding) -> bool:
        return bool(row.stop) and any(stop in self.decode(row.tokens[-8:]) for stop in row.stop)


def copied_columns(texts: list[str], recipe: Recipe) -> dict[str, pa.Array]:
    """copied_words and copy (gen_jobs.families.gpt.quality.CorpusSpans); null when the corpus is unknown here."""
    from gen_jobs.families.gpt.quality import corpus_spans

    spans = corpus_spans(recipe.data.model_dump_json())
    copied = [spans.longest_copied(t) if spans else None for t in texts]
    return {"copied_words": pa.array(copied, pa.int64()),
            "copy": pa.array([None if c is None else c >= recipe.quality.copy_words for c in copied], pa.bool_())}


def to_table(batch: dict[str, np.ndarray], recipe: Recipe) -> pa.Table:
    """Sampler output -> Arrow table: id, seed, prompt, text, num_prompt_tokens, num_tokens, perplexity,
    copied_words, copy, finish_reason."""
    return with_features(pa.table({
        **row_columns(batch),
        "prompt": pa.array(list(batch["prompt"]), pa.string()),
        "text": pa.array(list(batch["text"]), pa.string()),
        "num_prompt_tokens": pa.array(batch["num_prompt_tokens"], pa.int64()),
        "num_tokens": pa.array(batch["num_tokens"], pa.int64()),
        # the model's perplexity on its own sample (null without new tokens): low is fluent, very low repetitive
        "perplexity": pa.array(np.round(batch["perplexity"], 4), pa.float64(), from_pandas=True),
        **copied_columns(list(batch["text"]), recipe),
        "finish_reason": pa.array(list(batch["finish_reason"]), pa.string()),
    }))
