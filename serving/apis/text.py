"""Text models over the OpenAI API: POST /v1/completions and /v1/chat/completions.

Request fields: model, prompt (completions) or messages (chat), max_tokens
(default: the recipe's sampling.max_new_tokens), temperature, top_p, top_k
(an extension), n, stop, seed, stream (server-sent events ending with
`data: [DONE]`), stream_options.include_usage.

Seeds: choice k of a request with seed s is sampled with seed s + k. A row of a
`raygen generate` dataset with seed s and no prompt is what
`{"prompt": "", "seed": s}` returns with the recipe's sampling settings
(the defaults here). Without a seed the server draws one; every choice reports
the seed it used, so any answer can be reproduced.

Chat without a template of the model's own uses this one, and stops at "\nUser:":
    System: <system message>
    User: <user message>
    Assistant: <assistant message>
    ...
    Assistant:
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import TYPE_CHECKING, Literal

import numpy as np
from fastapi import FastAPI
from pydantic import Field

from serving.apis import MAX_SEED, MAX_TOP_K, Endpoint, HttpBody, choice_seed
from serving.errors import ApiError

if TYPE_CHECKING:
    from serving.app import Gateway
    from serving.config import Limits

KIND = "text"
CHAT_STOP = "\nUser:"
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


class StreamOptions(HttpBody):
    include_usage: bool = False


class SamplingFields(HttpBody):
    model: str
    max_tokens: int | None = Field(None, ge=1, description="new tokens per choice; default: the recipe's")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K, description="raygen extension; 0 = off")
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, description="up to 4 strings that end a choice")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted for compatibility, unused

    def stop_strings(self) -> list[str] | None:
        if self.stop is None:
            return None
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if len(stops) > 4 or not all(stops):
            raise ApiError(400, "stop takes at most 4 non-empty strings", param="stop")
        return stops


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(description="one prompt or a list; \"\" starts from nothing")

    def prompt_list(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts:
            raise ApiError(400, "prompt is an empty list; pass at least one prompt (\"\" for none)", param="prompt")
        return prompts

    def prompt_characters(self) -> int:
        return sum(len(p) for p in self.prompt_list())


class ChatMessage(HttpBody):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")

    def prompt_characters(self) -> int:
        return sum(len(m.content) for m in self.messages)


def check_completion(body: CompletionRequest, limits: Limits) -> CompletionRequest:
    return _check(body, limits, len(body.prompt_list()))


def check_chat(body: ChatRequest, limits: Limits) -> ChatRequest:
    if body.max_completion_tokens is not None:
        body = body.model_copy(update={"max_tokens": body.max_completion_tokens, "max_completion_tokens": None})
    return _check(body, limits, 1)


def _check(body: SamplingFields, limits: Limits, num_prompts: int) -> SamplingFields:
    if body.n * num_prompts > limits.max_n:
        raise ApiError(400, f"n x prompts = {body.n * num_prompts}; this server allows at most {limits.max_n} choices "
                            "per request", param="n")
    characters = body.prompt_characters()
    if characters > limits.max_prompt_chars:  # checked before anything tokenises it
        raise ApiError(400, f"the prompt has {characters:,} characters; this server accepts at most "
                            f"{limits.max_prompt_chars:,} a request", param="messages" if num_prompts == 1 and
                       isinstance(body, ChatRequest) else "prompt", code="context_length_exceeded")
    if body.max_tokens is not None and body.max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens {body.max_tokens} is above this server's limit of {limits.max_tokens}",
                       param="max_tokens")
    body.stop_strings()  # checked here, before any replica is involved
    return body


ENDPOINTS = (Endpoint("/v1/completions", KIND, CompletionRequest, check_completion),
             Endpoint("/v1/chat/completions", KIND, ChatRequest, check_chat))


def add_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await _serve(gateway, body, check_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        return await _serve(gateway, body, check_chat)


async def _serve(gateway: Gateway, body: SamplingFields, check):
    served = gateway.model(body.model, KIND)
    body = check(body, gateway.limits)
    if body.seed is None:
        body = body.model_copy(update={"seed": secrets.randbelow(MAX_SEED)})
    if body.stream:
        return await gateway.stream(served, body)
    return await gateway.call(served, body)


# ---------------------------------------------------------------- in the model's replica


def describe(sampler) -> dict:
    return {"context_length": sampler.context, "default_max_tokens": sampler.sampling.max_new_tokens,
            "default_temperature": sampler.sampling.temperature}


def prompts_of(sampler, request: SamplingFields) -> list[str | None]:
    """The prompt texts of a request ("" -> None: decoding starts from <|endoftext|>, as in a dataset row)."""
    if isinstance(request, ChatRequest):
        return [chat_prompt(sampler.tokenizer, request.messages)]
    return [p or None for p in request.prompt_list()]


def chat_prompt(tokenizer, messages: list[ChatMessage]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([m.model_dump(exclude_none=True) for m in messages],
                                             tokenize=False, add_generation_prompt=True)
    lines = [f"{ROLE_NAMES[m.role]}: {m.content}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


async def rows(sampler, request: SamplingFields, limits: Limits) -> dict[str, np.ndarray]:
    """The sampler batch for a request: one row per (prompt, choice), with the request's settings."""
    import asyncio

    from gen_jobs.data.columns import object_column

    s = sampler.sampling
    max_new = request.max_tokens or s.max_new_tokens
    if max_new >= sampler.context:
        raise ApiError(400, f"max_tokens {max_new} does not fit this model's context of {sampler.context} tokens",
                       param="max_tokens")
    from gen_jobs.families.gpt.sampler import PromptTooLong  # (in the replica: the gateway never imports torch)

    prompts = prompts_of(sampler, request)
    try:  # tokenised once, off the event loop; the sampler takes the ids
        prompt_ids = await asyncio.to_thread(sampler.encode_prompts, prompts, [max_new] * len(prompts), "error")
    except PromptTooLong as e:  # (the prompt's length in tokens is in the error: it is not tokenised again)
        raise ApiError(400, f"this model's context is {sampler.context} tokens: the prompt ({e.tokens} tokens) plus "
                            f"max_tokens ({max_new}) do not fit; shorten the prompt or lower max_tokens",
                       param="messages" if isinstance(request, ChatRequest) else "prompt",
                       code="context_length_exceeded") from None
    stop = request.stop_strings()
    if stop is None:
        stop = s.stop + ([CHAT_STOP] if isinstance(request, ChatRequest) and not getattr(sampler.tokenizer, "chat_template", None) else [])
    count = len(prompts) * request.n
    return {
        "seed": np.array([choice_seed(request.seed, k) for k in range(count)], dtype=np.int64),
        "prompt": object_column([p for p in prompts for _ in range(request.n)]),
        "prompt_ids": object_column([ids for ids in prompt_ids for _ in range(request.n)]),
        "max_new_tokens": np.full(count, max_new, dtype=np.int64),
        "temperature": np.full(count, s.temperature if request.temperature is None else request.temperature),
        "top_k": np.full(count, s.top_k if request.top_k is None else request.top_k, dtype=np.int64),
        "top_p": np.full(count, s.top_p if request.top_p is None else request.top_p),
        "stop": object_column([list(stop)] * count),
    }


def usage(request: SamplingFields, prompt_tokens: list[int], completion_tokens: list[int]) -> dict:
    prompt = int(sum(prompt_tokens[:: request.n]))  # each prompt counts once, not once per choice
    completion = int(sum(completion_tokens))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def respond(sampler, request: SamplingFields, out: dict[str, np.ndarray], model: str) -> dict:
    """OpenAI's Completion / ChatCompletion object for the sampled rows."""
    chat = isinstance(request, ChatRequest)
    choices = []
    for k, (text, reason, seed) in enumerate(zip(out["text"], out["finish_reason"], out["seed"])):
        choice = {"index": k, "finish_reason": str(reason), "logprobs": None, "seed": int(seed)}
        # OpenAI's description requires message.refusal; these models never refuse, so it is null as in the live API.
        choice.update({"message": {"role": "assistant", "content": str(text), "refusal": None}} if chat
                      else {"text": str(text)})
        choices.append(choice)
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(request, list(out["num_prompt_tokens"]), list(out["num_tokens"])),
    }


class Stream:
    """Turns the rows' decoding state after each step into OpenAI stream chunks."""

    def __init__(self, sampler, request: SamplingFields, model: str):
        self.sampler, self.request, self.model = sampler, request, model
        self.chat = isinstance(request, ChatRequest)
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.shown: dict[int, str] = {}  # choice index -> text sent so far
        self.ended: dict[int, tuple[int, int]] = {}  # choice index -> (prompt tokens, new tokens)

    def chunks(self, rows: list, first_index: int) -> list[dict]:
        """Chunks for what rows first_index.. gained since the last call."""
        out = []
        for k, row in enumerate(rows, start=first_index):
            if k in self.ended:
                continue
            visible = self.sampler.visible_text(row)
            delta = visible[len(self.shown.get(k, "")):]
            reason = self.sampler.final_text(row)[1] if row.finish_reason else None
            if delta or reason or (self.chat and k not in self.shown):
                out.append(self._chunk(k, delta, reason, first=k not in self.shown))
            self.shown[k] = visible
            if reason:
                self.ended[k] = (row.prompt_tokens, len(row.tokens))
        return out

    def _chunk(self, k: int, text: str, reason: str | None, first: bool) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            choice = {"index": k, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": k, "text": text, "finish_reason": reason, "logprobs": None}
        if first:
            choice["seed"] = choice_seed(self.request.seed, k)
        return self._envelope([choice])

    def _envelope(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices}

    def last_chunks(self) -> list[dict]:
        """The usage chunk, when the request asked for it (stream_options.include_usage)."""
        if not (self.request.stream_options and self.request.stream_options.include_usage):
            return []
        ends = [self.ended[k] for k in sorted(self.ended)]
        return [{**self._envelope([]), "usage": usage(self.request, [p for p, _ in ends], [t for _, t in ends])}]
