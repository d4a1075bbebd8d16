"""GPT text: a HuggingFace `GPT2LMHeadModel` with a byte-level BPE tokenizer trained here.

One file, three faces (see DESIGN.md):
    Recipe                  the pydantic recipe of this family
    train_tokenizer         byte-level BPE on the corpus (offline, `tokenizers`)
    train_loop_per_worker   the Ray Train loop (DDP, AdamW, warm-up + cosine decay)
    Sampler                 checkpoint -> text; used by Ray Data and Ray Serve
    to_table                sampler output -> Arrow table of the dataset

A checkpoint is a `save_pretrained` folder (model + tokenizer) plus raygen's
recipe.json; any HuggingFace causal-LM folder works as a checkpoint too.

Sampling is per row: each row has its own random generator, seeded from the
row's seed, and draws one uniform number per new token, which picks the token by
inverse CDF. A row's text therefore depends only on (checkpoint, prompt,
sampling settings, seed), not on the rows that share its batch, up to
floating-point differences between batch shapes (measured in the tests).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from gen_jobs import checkpoint
from gen_jobs.errors import UserError
from gen_jobs.recipes import RecipeBase, StrictModel
from gen_jobs.text_data import TextDataConfig, load_documents, split_documents

END_OF_TEXT = "<|endoftext|>"
TAKES_PROMPTS = True  # the sampler reads a "prompt" column


class ModelConfig(StrictModel):
    n_layer: int = Field(4, gt=0, le=96)
    n_head: int = Field(4, gt=0, le=128)
    n_embd: int = Field(128, gt=0, le=16384)
    n_positions: int = Field(128, ge=16, le=32768, description="context length in tokens")
    vocab_size: int = Field(2048, ge=260, le=262144, description="BPE vocabulary trained on the corpus")
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class TrainConfig(StrictModel):
    epochs: int = Field(gt=0)
    batch_size: int = Field(16, gt=0, description="blocks of n_positions tokens per worker and step")
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay ends at lr * this")
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(5, gt=0)
    max_failures: int = Field(2, ge=0)


class SamplingConfig(StrictModel):
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.8, ge=0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 = off")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    stop: list[str] = Field(default_factory=list, description="strings that end a sample")
    long_prompts: Literal["truncate_left", "error"] = Field(
        "truncate_left", description="prompts longer than the context: keep their end (with a warning) or refuse"
    )


class Recipe(RecipeBase):
    family: Literal["gpt"] = "gpt"
    model: ModelConfig = ModelConfig()
    data: TextDataConfig = TextDataConfig()
    train: TrainConfig
    sampling: SamplingConfig = SamplingConfig()

    @model_validator(mode="after")
    def _room_to_generate(self) -> "Recipe":
        if self.sampling.max_new_tokens >= self.model.n_positions:
            raise ValueError(
                f"sampling.max_new_tokens ({self.sampling.max_new_tokens}) must be below the context "
                f"length model.n_positions ({self.model.n_positions})"
            )
        return self


def recipe_for_pretrained(uri: str) -> Recipe:
    """A recipe describing a user's HuggingFace causal-LM folder (no raygen recipe.json).

    Sizes come from its config.json; training settings are placeholders (it was not
    trained here); sampling uses this family's defaults, overridable with --set.
    """
    from gen_jobs import storage

    try:
        config = json.loads(storage.read_bytes(storage.join(uri, "config.json")))
    except json.JSONDecodeError as e:
        raise UserError(f"{uri}/config.json is not valid JSON ({e})") from e
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"{uri} holds a {model_type!r} model, not a causal language model; raygen's text family needs one")
    cfg = AutoConfig.for_model(**config)
    context = getattr(cfg, "max_position_embeddings", None) or 1024
    model = ModelConfig(
        n_layer=cfg.num_hidden_layers,
        n_head=cfg.num_attention_heads,
        n_embd=cfg.hidden_size,
        n_positions=context,
        vocab_size=max(cfg.vocab_size, 260),
        dropout=0.0,
    )
    sampling = SamplingConfig(max_new_tokens=min(SamplingConfig().max_new_tokens, context // 2))
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "pretrained"
    return Recipe(name=name, model=model, train=TrainConfig(epochs=1), sampling=sampling)


# ---------------------------------------------------------------- tokenizer


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
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


# ---------------------------------------------------------------- training


def prepare_config(recipe: Recipe) -> dict:
    """Driver-side preparation: the tokenizer is trained once, before any worker starts."""
    documents = load_documents(recipe.data)
    train_docs, _ = split_documents(documents, recipe.data.held_out)
    tokenizer = train_tokenizer(train_docs, recipe.model.vocab_size)
    return {"tokenizer": tokenizer.backend_tokenizer.to_str()}


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_ratio` of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train loop: DDP over the workers, each on its slice of every batch."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    recipe = Recipe.model_validate(config["recipe"])
    t, cfg = recipe.train, recipe.model
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    tokenizer = tokenizer_from_json(config["tokenizer"])
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than model.vocab_size {cfg.vocab_size}")
    train_docs, held_docs = split_documents(load_documents(recipe.data), recipe.data.held_out)
    train_blocks = pack_blocks(train_docs, tokenizer, cfg.n_positions)
    held_blocks = pack_blocks(held_docs, tokenizer, cfg.n_positions)

    torch.manual_seed(t.seed)
    model = build_model(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr, betas=(0.9, 0.95),
    )
    steps_per_epoch = max(1, len(train_blocks) // (t.batch_size * world))
    total = steps_per_epoch * t.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, t.warmup_steps, total, t.min_lr_ratio)
    )
    start_epoch = 0
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as folder:
            model.load_state_dict(checkpoint.load_state(Path(folder), "model"), strict=False)
            state = torch.load(Path(folder) / "train_state.pt", weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch = int(state["epoch"])
    model.tie_weights()
    ddp_model = ray.train.torch.prepare_model(model)

    for epoch in range(start_epoch, t.epochs):
        started = time.perf_counter()
        ddp_model.train()
        order = torch.randperm(len(train_blocks), generator=torch.Generator().manual_seed(t.seed + epoch))
        total_loss = torch.zeros(1)
        for step in range(steps_per_epoch):
            idx = order[step * t.batch_size * world:][rank::world][: t.batch_size]
            batch = train_blocks[idx].to(device)  # B x T
            loss = ddp_model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach().cpu()
        held_loss = _held_out_loss(model, held_blocks[rank::world], device)  # (sum, count)
        stats = torch.tensor([total_loss.item() / steps_per_epoch, held_loss[0], held_loss[1]])
        if world > 1:
            dist.all_reduce(stats)
        train_loss = stats[0].item() / world
        val_loss = stats[1].item() / max(stats[2].item(), 1)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 4),
            "held_out_loss": round(val_loss, 4),
            "held_out_perplexity": round(math.exp(min(val_loss, 50)), 2),
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - started, 2),
        }
        last = epoch + 1 == t.epochs
        if rank == 0 and (last or (epoch + 1) % t.checkpoint_every == 0):
            with tempfile.TemporaryDirectory(prefix="raygen-ckpt-") as folder:
                save(Path(folder), recipe, model, tokenizer, {"epoch": epoch + 1, "metrics": metrics})
                torch.save(
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch + 1},
                    Path(folder) / "train_state.pt",
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics, checkpoint=None)


@torch.no_grad()
def _held_out_loss(model, blocks: torch.Tensor, device) -> tuple[float, float]:
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


def save(folder: Path, recipe: Recipe, model, tokenizer, info: dict) -> None:
    """A checkpoint: save_pretrained model + tokenizer, plus raygen's recipe and info."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    checkpoint.write(folder, recipe, {}, info)


def describe_epoch(m: dict, epochs: int) -> str:
    return (
        f"epoch {m['epoch']}/{epochs}  train loss {m['train_loss']:.3f}  held-out loss {m['held_out_loss']:.3f}"
        f"  perplexity {m['held_out_perplexity']:.1f}  ({m['seconds']:.1f} s)"
    )


# ---------------------------------------------------------------- sampling


@dataclass
class Decoding:
    """One row's decoding so far: its new token ids and, once ended, why."""

    prompt_tokens: int  # 0 for an empty prompt (decoding starts from <|endoftext|>)
    stop: list[str]  # strings that end this row
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # None while running, then "stop" or "length"

    def snapshot(self) -> "Decoding":
        """A copy that later decoding steps do not change."""
        return replace(self, tokens=list(self.tokens))


ROW_SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "stop")  # optional per-row batch columns


def object_column(values: list) -> np.ndarray:
    """A 1-D object array of arbitrary Python values (np.array would turn equal-length lists into 2-D)."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


class Sampler:
    """Checkpoint -> text. One instance per Ray Data actor or Serve replica.

    __call__ maps a batch {"seed": int64 B, optional "prompt": str-or-None B, other
    columns passed through} to the same batch plus "prompt", "text",
    "num_prompt_tokens", "num_tokens" and "finish_reason" ("stop" or "length").
    A batch may carry per-row sampling settings in the columns ROW_SETTINGS
    (Serve does: each request brings its own); absent columns take the recipe's.
    `stream` yields the same rows step by step, for streaming responses.
    """

    def __init__(self, checkpoint_uri: str, device: str = "cpu", recipe: Recipe | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-actor "Loading weights" bars only garble the job log
        with checkpoint.LocalCheckpoint(checkpoint_uri) as ckpt:
            self.recipe: Recipe = recipe or ckpt.recipe
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
                    raise UserError(
                        f"a prompt has {len(ids)} tokens; with max_new_tokens {max_new} the context of "
                        f"{self.context} leaves room for {room}: shorten it or set sampling.long_prompts=truncate_left"
                    )
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
        prompt_ids = self.encode_prompts(self._prompts(batch), settings["max_new_tokens"])
        return self.decode_steps(prompt_ids, np.asarray(batch["seed"]), settings)

    def output(self, batch: dict[str, np.ndarray], rows: list[Decoding]) -> dict[str, np.ndarray]:
        """The output columns of a decoded batch (`rows`: the last state `stream` yielded)."""
        texts, reasons = zip(*(self.final_text(row) for row in rows)) if rows else ((), ())
        return {
            **batch,
            "prompt": np.array(self._prompts(batch), dtype=object),
            "text": np.array(texts, dtype=object),
            "num_prompt_tokens": np.array([row.prompt_tokens for row in rows], dtype=np.int64),
            "num_tokens": np.array([len(row.tokens) for row in rows], dtype=np.int64),
            "finish_reason": np.array(reasons, dtype=object),
        }

    @torch.inference_mode()
    def decode_steps(self, prompt_ids: list[list[int]], seeds: np.ndarray, settings: dict[str, list]) -> Iterator[list[Decoding]]:
        """Batched decoding with a KV cache over left-padded prompts, one yield per step.

        Each row ends with "stop" at <|endoftext|> (not kept) or a stop string,
        or "length" after its max_new_tokens steps; the batch runs until all have ended.
        """
        b = len(prompt_ids)
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((b, width), self.pad, dtype=torch.long)  # masked out below
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, ids in enumerate(prompt_ids):  # left padding: every prompt ends at column width-1
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        # Token picking runs where the logits are (B x V never leaves the GPU); rows stay independent there too.
        temperature = torch.tensor(settings["temperature"], dtype=torch.float32, device=self.device)
        top_k = torch.tensor(settings["top_k"], dtype=torch.long, device=self.device)
        top_p = torch.tensor(settings["top_p"], dtype=torch.float32, device=self.device)
        max_new = [int(m) for m in settings["max_new_tokens"]]
        rows = [Decoding(prompt_tokens=len(ids) if ids != [self.eos] else 0, stop=list(stop))
                for ids, stop in zip(prompt_ids, settings["stop"])]
        cache = None
        step_ids = input_ids
        for step in range(max(max_new)):
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
            result = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                cache=cache, use_cache=True, logits_to_keep=1)
            cache = result.cache  # keys/values of every position so far: only new tokens are fed
            logits = result.logits[:, -1, :].float()  # B x V
            # One uniform draw per row and step, from the row's own (CPU) generator.
            uniforms = torch.tensor([float(torch.rand(1, generator=g)) for g in generators], device=self.device)
            next_ids = pick_tokens(logits, uniforms, temperature, top_k, top_p).cpu()
            for i, row in enumerate(rows):
                if row.finish_reason is not None:
                    continue
                token = int(next_ids[i])
                if token == self.eos:
                    row.finish_reason = "stop"
                    continue
                row.tokens.append(token)
                if row.stop and any(stop in self.decode(row.tokens[-8:]) for stop in row.stop):
                    row.finish_reason = "stop"
                elif step + 1 >= max_new[i]:
                    row.finish_reason = "length"
            yield rows
            if all(row.finish_reason is not None for row in rows):
                return
            step_ids = next_ids.view(b, 1).to(self.device)
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=self.device)], dim=1)


def pick_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: torch.Tensor | float,
                top_k: torch.Tensor | int, top_p: torch.Tensor | float) -> torch.Tensor:
    """Next token per row (logits B x V float32) by inverse CDF of the filtered distribution.

    temperature, top_k and top_p are per row (B) or one value for all; temperature
    0 is greedy, top_k 0 and top_p 1 are off. Each row only uses its own logits,
    settings and uniform number, so rows never influence each other.
    """
    b, v = logits.shape
    temperature, top_k, top_p = (torch.as_tensor(x).expand(b) for x in (temperature, top_k, top_p))
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


def to_table(batch: dict[str, np.ndarray], recipe: Recipe) -> pa.Table:
    """Sampler output -> Arrow table: id, seed, prompt, text, num_prompt_tokens, num_tokens, finish_reason."""
    from gen_jobs.image_encoding import huggingface_metadata

    table = pa.table({
        "id": pa.array(batch["id"], pa.int64()),
        "seed": pa.array(batch["seed"], pa.int64()),
        "prompt": pa.array(list(batch["prompt"]), pa.string()),
        "text": pa.array(list(batch["text"]), pa.string()),
        "num_prompt_tokens": pa.array(batch["num_prompt_tokens"], pa.int64()),
        "num_tokens": pa.array(batch["num_tokens"], pa.int64()),
        "finish_reason": pa.array(list(batch["finish_reason"]), pa.string()),
    })
    features = {f.name: {"dtype": "int64" if pa.types.is_integer(f.type) else "string", "_type": "Value"} for f in table.schema}
    return table.replace_schema_metadata(huggingface_metadata(features))


def score_dataset(table: pa.Table, recipe: Recipe, checkpoint_uri: str) -> dict:
    """Text quality figures of a generated table (memorisation against the training corpus)."""
    from gen_jobs.text_quality import score_texts

    perplexity = checkpoint.training_metrics(checkpoint_uri).get("held_out_perplexity")
    try:
        corpus = load_documents(recipe.data)
    except UserError:  # a bring-your-own model's corpus is unknown here
        corpus = None
    quality = score_texts(table.column("text").to_pylist(), corpus, perplexity)
    return {"summary": quality.summary(), **quality.model_dump(exclude_none=True)}
