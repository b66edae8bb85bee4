"""The labeling server's FastAPI app: /v1/chat/completions,
/v1/completions, /v1/models, /v1/stats and /health over one model.

The endpoints are thin: each hands its parsed body to a module function
over `Served` (the model's name, tokenizer, forwards and request counts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Callable
import uuid

import fastapi

from dashclip_jax.curation.serve import generation
from dashclip_jax.curation.serve import protocol
from dashclip_jax.serving import openai_http
from dashclip_jax.serving.openai_http import RequestError

MAX_REQUEST_BYTES = 1 << 20
COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")


@dataclasses.dataclass
class Served:
  """One served model: `name` (the id clients ask for), its tokenizer, the
  engine's forwards behind `batcher`, and what was served (`counts`)."""
  name: str
  tokenizer: Any
  engine: Any
  batcher: Any
  longest_token: int | None = None
  counts: dict[str, Any] = dataclasses.field(default_factory=lambda: {
      "requests": {}, "status": {}, "prompt_tokens": 0,
      "completion_tokens": 0})


def count_response(counts: dict[str, Any], path: str, status: int) -> None:
  """Counts a response by path (/v1/... or "other") and status; /v1/stats
  itself is not counted."""
  if path == "/v1/stats":
    return
  key = path if path.startswith("/v1/") else "other"
  counts["requests"][key] = counts["requests"].get(key, 0) + 1
  counts["status"][str(status)] = counts["status"].get(str(status), 0) + 1


def _tokenize(s: Served, prompt: Callable[[], str],
              max_tokens: int) -> list[int]:
  text = prompt()
  protocol.check_fits_untokenized(text, max_tokens, s.engine.max_length,
                                  s.longest_token)
  return s.tokenizer.encode([text])[0]


async def complete(s: Served, prompt: Callable[[], str], body: Any,
                   max_tokens: int, top_k: int
                   ) -> tuple[dict[str, Any], dict[str, int]]:
  """-> (generation.generate's result, usage). `prompt` renders the prompt
  text: it runs, with the tokenizer, on a worker thread, so a long one does
  not hold up other requests."""
  protocol.check_common(body, s.name)
  ids = await asyncio.get_running_loop().run_in_executor(
      None, _tokenize, s, prompt, max_tokens)
  if not ids:
    raise RequestError("the prompt is empty", "prompt")
  max_length = s.engine.max_length
  if len(ids) + max_tokens > max_length:
    raise RequestError(
        f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) "
        f"exceeds this server's context of {max_length} tokens",
        "max_tokens", code="context_length_exceeded")
  gen = await generation.generate(
      s.batcher, s.tokenizer.eos_id, ids, max_tokens, body.temperature,
      body.top_p, body.seed, top_k)
  s.counts["prompt_tokens"] += len(ids)
  s.counts["completion_tokens"] += len(gen["ids"])
  return gen, {"prompt_tokens": len(ids),
               "completion_tokens": len(gen["ids"]),
               "total_tokens": len(ids) + len(gen["ids"])}


async def chat_completion(s: Served, body: protocol.ChatRequest
                          ) -> dict[str, Any]:
  """The /v1/chat/completions response."""
  if body.top_logprobs and not body.logprobs:
    raise RequestError("top_logprobs needs logprobs=true", "top_logprobs")
  max_tokens = body.max_completion_tokens or body.max_tokens or (
      protocol.DEFAULT_MAX_TOKENS)
  gen, usage = await complete(
      s, lambda: protocol.chat_prompt(s.tokenizer, body.messages), body,
      max_tokens, body.top_logprobs or 0)
  return {
      "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
      "object": "chat.completion", "created": int(time.time()),
      "model": s.name, "system_fingerprint": None,
      "choices": [{
          "index": 0, "finish_reason": gen["finish_reason"],
          "message": {"role": "assistant", "refusal": None,
                      "content": s.tokenizer.decode(gen["ids"])},
          "logprobs": generation.chat_logprobs(s.tokenizer, gen)
                      if body.logprobs else None}],
      "usage": usage}


async def text_completion(s: Served, body: protocol.CompletionRequest
                          ) -> dict[str, Any]:
  """The /v1/completions response."""
  if body.echo:
    raise RequestError("echo=true is not supported by this server", "echo")
  prompt = body.prompt
  if isinstance(prompt, list):
    if len(prompt) != 1:
      raise RequestError(f"one prompt per request, not {len(prompt)}",
                         "prompt")
    prompt = prompt[0]
  gen, usage = await complete(s, lambda: prompt, body, body.max_tokens,
                              body.logprobs or 0)
  return {
      "id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
      "created": int(time.time()), "model": s.name,
      "system_fingerprint": None,
      "choices": [{
          "index": 0, "finish_reason": gen["finish_reason"],
          "text": s.tokenizer.decode(gen["ids"]),
          "logprobs": generation.completion_logprobs(s.tokenizer, gen)
                      if body.logprobs is not None else None}],
      "usage": usage}


def stats(s: Served) -> dict[str, Any]:
  """The /v1/stats response: counts, the engine's and the batcher's."""
  served = sum(s.counts["requests"].get(p, 0) for p in COMPLETION_PATHS)
  return {"model": s.name, "completion_requests": served, **s.counts,
          **s.engine.stats(), **s.batcher.stats()}


def make_app(name: str, tokenizer: Any, engine: Any, batcher: Any,
             max_request_bytes: int = MAX_REQUEST_BYTES) -> fastapi.FastAPI:
  """The FastAPI app serving `name` through `batcher` (started and
  stopped with the app) of `engine`'s forwards; bodies over
  `max_request_bytes` get 413."""
  s = Served(name, tokenizer, engine, batcher,
             protocol.longest_token_bytes(tokenizer))

  api = openai_http.app_serving("dashclip_jax serve", batcher,
                                max_request_bytes)

  @api.middleware("http")
  async def count(request, call_next):
    response = await call_next(request)
    count_response(s.counts, request.url.path, response.status_code)
    return response

  @api.get("/health")
  async def health():
    return {"status": "ok"}

  @api.get("/v1/models")
  async def models():
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0,
         "owned_by": "dashclip_jax"}]}

  @api.get("/v1/stats")
  async def stats_endpoint():
    return stats(s)

  @api.post("/v1/chat/completions")
  async def chat(body: protocol.ChatRequest):
    return await chat_completion(s, body)

  @api.post("/v1/completions")
  async def completions(body: protocol.CompletionRequest):
    return await text_completion(s, body)

  return api
