"""An OpenAI-compatible server for a GGUF Llama or a GPT teacher.

  python -m dashclip_jax.curation.serve --model=DIR [--host=127.0.0.1]
      [--port=8000] [--max_batch=16] [--batch_wait_ms=5] [--max_length=512]
      [--max_request_bytes=1048576]

DIR is a .gguf file, a directory holding exactly one, a saved GPT teacher
directory (`gpt.labeler.save_gpt_teacher`; LoRA merged), or "default" / ""
for the packaged SmolLM2. It binds to loopback unless --host says
otherwise, and serves, on FastAPI/uvicorn:

  GET  /v1/models            the one model (its id: --served_model_name,
                             else the teacher_id or the GGUF's file stem)
  POST /v1/chat/completions  messages rendered with the model's chat
                             template, the assistant turn opened
  POST /v1/completions       a raw prompt
  GET  /v1/stats             request counts by path and status, forwards,
                             batch sizes, compiled shapes, tokens
  GET  /health

with max_tokens (default 16), temperature (0: greedy; > 0: sampling,
reproducible with `seed`), top_p, and logprobs (chat: logprobs=true plus
top_logprobs <= 20; completions: logprobs=k <= 20) in OpenAI's response
schemas, and usage counts. Generation stops at max_tokens or the end-of-
text token (not in the text). Concurrent requests are batched
(`serve_batching`, `serving.batching`); each generated token is one full forward (no KV
cache), so long generations are slow: this server is for labelling, whose
answer is one token. Not supported, answered 400: stream, n > 1, stop,
echo. Bad requests get HTTP 400 with an OpenAI-style error body; another
model's name gets 404.

One request cannot stall the others: a body over --max_request_bytes gets
413 from its Content-Length, before it is read (or as soon as the bytes
read pass the limit); a prompt whose bytes cannot fit the context in
tokens (the vocabulary's longest token bounds bytes per token) gets 400
before it is tokenized; and tokenizing runs on a worker thread, off the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import sys
import time
import uuid
from typing import Any, Callable, Literal

import numpy as np
import pydantic

from dashclip_jax.serving import openai_http
from dashclip_jax.serving.openai_http import RequestError

MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 16
MAX_REQUEST_BYTES = 1 << 20
COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")

# ---------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------


def load_model(spec: str) -> tuple[str, Any, dict, Any]:
  """DIR -> (model id, LlamaConfig, params, GptTokenizer); a missing or
  unusable DIR -> ValueError naming it."""
  spec = spec.strip()
  if spec not in ("", "default") and not os.path.exists(spec):
    raise ValueError(f"--model={spec}: no such file or directory")
  import jax  # pylint: disable=g-import-not-at-top
  from dashclip_jax.curation.labelers.gpt import gguf_loader  # pylint: disable=g-import-not-at-top
  from dashclip_jax.curation.labelers.gpt import labeler as gpt_labeler  # pylint: disable=g-import-not-at-top
  if os.path.isdir(spec) and gpt_labeler.is_gpt_teacher(spec):
    teacher = gpt_labeler.load_gpt_teacher(spec)
    return (teacher.teacher_id, teacher.config,
            jax.device_get(teacher.params),
            teacher.prompts.tokenizer)
  if spec in ("", "default"):
    path = gguf_loader.resolve("")
  elif os.path.isdir(spec):
    found = sorted(glob.glob(os.path.join(spec, "*.gguf")))
    if len(found) != 1:
      raise ValueError(f"--model={spec}: a directory needs exactly one .gguf "
                       f"file or a GPT teacher's teacher.json; it has "
                       f"{len(found)} .gguf files")
    path = found[0]
  else:
    path = spec
  loaded, tokenizer = gpt_labeler.base_model(path)
  return (os.path.splitext(os.path.basename(path))[0], loaded.config,
          loaded.params, tokenizer)


# ---------------------------------------------------------------------------
# Requests.
# ---------------------------------------------------------------------------


class _Base(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")
  model: str
  temperature: float = pydantic.Field(1.0, ge=0.0, le=2.0)
  top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0)
  n: int = 1
  stream: bool = False
  seed: int | None = None
  stop: str | list[str] | None = None


class Message(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")
  role: Literal["system", "developer", "user", "assistant"]
  content: str | list[dict[str, Any]]


class ChatRequest(_Base):
  messages: list[Message] = pydantic.Field(min_length=1)
  max_tokens: int | None = pydantic.Field(None, ge=1)
  max_completion_tokens: int | None = pydantic.Field(None, ge=1)
  logprobs: bool = False
  top_logprobs: int | None = pydantic.Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(_Base):
  prompt: str | list[str]
  max_tokens: int = pydantic.Field(DEFAULT_MAX_TOKENS, ge=1)
  logprobs: int | None = pydantic.Field(None, ge=0, le=MAX_TOP_LOGPROBS)
  echo: bool = False


def check_common(body: Any, served: str) -> None:
  """RequestError for what no endpoint here supports, or another model."""
  if body.model != served:
    raise RequestError(f"The model {body.model!r} does not exist; this "
                       f"server serves {served!r}", "model", 404,
                       "model_not_found")
  for name, bad in (("stream", body.stream), ("n", body.n != 1),
                    ("stop", body.stop is not None)):
    if bad:
      raise RequestError(f"{name}={getattr(body, name)!r} is not supported "
                         "by this server", name)


def message_text(content: str | list[dict[str, Any]]) -> str:
  """A message's text: a string, or its text parts joined."""
  if isinstance(content, str):
    return content
  parts = []
  for part in content:
    if part.get("type") != "text" or not isinstance(part.get("text"), str):
      raise RequestError(f"content part of type {part.get('type')!r} is not "
                         "supported (text only)", "messages")
    parts.append(part["text"])
  return "".join(parts)


def chat_prompt(tokenizer: Any, messages: list[Any]) -> str:
  """The model's chat template over the messages, assistant turn opened."""
  if not tokenizer.chat_template:
    raise RequestError("this model has no chat template: use "
                       "/v1/completions", "messages")
  return tokenizer.apply_chat_template(
      [{"role": "system" if m.role == "developer" else m.role,
        "content": message_text(m.content)} for m in messages],
      add_generation_prompt=True)


def longest_token_bytes(tokenizer: Any) -> int | None:
  """At least the bytes any one token covers: the UTF-8 length of the
  vocabulary's longest token text (byte-level BPE spells each byte as one
  char of 1-2 UTF-8 bytes); None for a tokenizer without a vocabulary."""
  vocab = getattr(getattr(tokenizer, "tokenizer", None), "get_vocab", None)
  if vocab is None:
    return None
  return max(len(t.encode("utf-8")) for t in vocab(with_added_tokens=True))


def check_fits_untokenized(prompt: str, max_tokens: int, max_length: int,
                           longest: int | None) -> None:
  """RequestError when the prompt cannot fit the context whatever its
  tokens: it has at least ceil(bytes / longest token) of them. Cheap, so
  a huge prompt is refused before the tokenizer spends seconds on it."""
  if longest is None:
    return
  least = -(-len(prompt.encode("utf-8", "replace")) // longest)
  if least + max_tokens > max_length:
    raise RequestError(
        f"the prompt (at least {least} tokens) plus max_tokens "
        f"({max_tokens}) exceeds this server's context of {max_length} "
        "tokens", "max_tokens", code="context_length_exceeded")


# ---------------------------------------------------------------------------
# Generation.
# ---------------------------------------------------------------------------


def choose(logprobs: np.ndarray, temperature: float, top_p: float,
           rng: np.random.Generator) -> int:
  """The next token: argmax at temperature 0, else a sample of
  softmax(logprobs / temperature) within the top_p nucleus."""
  if temperature == 0:
    return int(np.argmax(logprobs))
  z = logprobs.astype(np.float64) / temperature
  p = np.exp(z - z.max())
  p /= p.sum()
  if top_p < 1:
    order = np.argsort(-p, kind="stable")
    keep = order[:int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
    p = np.zeros_like(p)
    p[keep] = 1.0
    p *= np.exp(z - z.max())
    p /= p.sum()
  return int(rng.choice(len(p), p=p))


def top_alternatives(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
  """The k most likely tokens, most likely first."""
  if k <= 0:
    return []
  top = np.argpartition(-logprobs, k - 1)[:k] if k < len(logprobs) else (
      np.arange(len(logprobs)))
  top = top[np.argsort(-logprobs[top], kind="stable")]
  return [(int(t), float(logprobs[t])) for t in top]


async def generate(batcher: Any, eos_id: int, prompt_ids: list[int],
                   max_tokens: int, temperature: float, top_p: float,
                   seed: int | None, top_k: int) -> dict[str, Any]:
  """-> {"ids", "logprobs" (own), "top" (alternatives per token),
  "finish_reason"}: up to max_tokens tokens after prompt_ids."""
  rng = np.random.default_rng(seed)
  ids, out = list(prompt_ids), {"ids": [], "logprobs": [], "top": [],
                                "finish_reason": "length"}
  for _ in range(max_tokens):
    logprobs = await batcher.submit(ids)
    token = choose(logprobs, temperature, top_p, rng)
    if token == eos_id:
      out["finish_reason"] = "stop"
      break
    out["ids"].append(token)
    out["logprobs"].append(float(logprobs[token]))
    out["top"].append(top_alternatives(logprobs, top_k))
    ids.append(token)
  return out


def _token_entry(text: str, logprob: float) -> dict[str, Any]:
  return {"token": text, "logprob": logprob,
          "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer: Any, gen: dict[str, Any]) -> dict[str, Any]:
  """choices[0].logprobs of a chat completion."""
  piece = lambda i: tokenizer.decode([i])
  return {"content": [
      dict(_token_entry(piece(t), lp), top_logprobs=[
          _token_entry(piece(a), alp) for a, alp in alts])
      for t, lp, alts in zip(gen["ids"], gen["logprobs"], gen["top"])],
          "refusal": None}


def completion_logprobs(tokenizer: Any, gen: dict[str, Any]
                        ) -> dict[str, Any]:
  """choices[0].logprobs of a (text) completion."""
  tokens = [tokenizer.decode([t]) for t in gen["ids"]]
  offsets = np.cumsum([0] + [len(t) for t in tokens])[:-1]
  top = []
  for alts in gen["top"]:
    d: dict[str, float] = {}
    for a, lp in alts:  # Most likely first: a duplicate text keeps it.
      d.setdefault(tokenizer.decode([a]), lp)
    top.append(d)
  return {"tokens": tokens, "token_logprobs": gen["logprobs"],
          "top_logprobs": top, "text_offset": [int(o) for o in offsets]}


# ---------------------------------------------------------------------------
# The app.
# ---------------------------------------------------------------------------


def make_app(name: str, tokenizer: Any, engine: Any, batcher: Any,
             max_request_bytes: int = MAX_REQUEST_BYTES) -> Any:
  """The FastAPI app serving `name` through `batcher` (started and
  stopped with the app) of `engine`'s forwards; bodies over
  `max_request_bytes` get 413."""
  import fastapi  # pylint: disable=g-import-not-at-top
  max_length = engine.max_length
  longest = longest_token_bytes(tokenizer)
  counts = {"requests": {}, "status": {}, "prompt_tokens": 0,
            "completion_tokens": 0}

  @contextlib.asynccontextmanager
  async def lifespan(_):
    batcher.start()
    yield
    await batcher.stop()

  api = fastapi.FastAPI(title="dashclip_jax serve", lifespan=lifespan)
  openai_http.install(api, max_request_bytes)

  @api.middleware("http")
  async def count(request, call_next):
    response = await call_next(request)
    path = request.url.path
    if path != "/v1/stats":
      key = path if path.startswith("/v1/") else "other"
      counts["requests"][key] = counts["requests"].get(key, 0) + 1
      status = str(response.status_code)
      counts["status"][status] = counts["status"].get(status, 0) + 1
    return response

  def tokenize(prompt: Callable[[], str], max_tokens: int) -> list[int]:
    text = prompt()
    check_fits_untokenized(text, max_tokens, max_length, longest)
    return tokenizer.encode([text])[0]

  async def complete(prompt: Callable[[], str], body: Any, max_tokens: int,
                     top_k: int) -> tuple[dict[str, Any], dict[str, int]]:
    """`prompt` renders the prompt text: it runs, with the tokenizer, on a
    worker thread, so a long one does not hold up other requests."""
    check_common(body, name)
    ids = await asyncio.get_running_loop().run_in_executor(
        None, tokenize, prompt, max_tokens)
    if not ids:
      raise RequestError("the prompt is empty", "prompt")
    if len(ids) + max_tokens > max_length:
      raise RequestError(
          f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) "
          f"exceeds this server's context of {max_length} tokens",
          "max_tokens", code="context_length_exceeded")
    gen = await generate(batcher, tokenizer.eos_id, ids, max_tokens,
                         body.temperature, body.top_p, body.seed, top_k)
    counts["prompt_tokens"] += len(ids)
    counts["completion_tokens"] += len(gen["ids"])
    return gen, {"prompt_tokens": len(ids),
                 "completion_tokens": len(gen["ids"]),
                 "total_tokens": len(ids) + len(gen["ids"])}

  @api.get("/health")
  async def health():
    return {"status": "ok"}

  @api.get("/v1/models")
  async def models():
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0,
         "owned_by": "dashclip_jax"}]}

  @api.get("/v1/stats")
  async def stats():
    served = sum(counts["requests"].get(p, 0) for p in COMPLETION_PATHS)
    return {"model": name, "completion_requests": served, **counts,
            **engine.stats(), **batcher.stats()}

  @api.post("/v1/chat/completions")
  async def chat(body: ChatRequest):
    if body.top_logprobs and not body.logprobs:
      raise RequestError("top_logprobs needs logprobs=true", "top_logprobs")
    max_tokens = body.max_completion_tokens or body.max_tokens or (
        DEFAULT_MAX_TOKENS)
    gen, usage = await complete(
        lambda: chat_prompt(tokenizer, body.messages), body, max_tokens,
        body.top_logprobs or 0)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion", "created": int(time.time()),
        "model": name, "system_fingerprint": None,
        "choices": [{
            "index": 0, "finish_reason": gen["finish_reason"],
            "message": {"role": "assistant", "refusal": None,
                        "content": tokenizer.decode(gen["ids"])},
            "logprobs": chat_logprobs(tokenizer, gen) if body.logprobs
                        else None}],
        "usage": usage}

  @api.post("/v1/completions")
  async def completions(body: CompletionRequest):
    if body.echo:
      raise RequestError("echo=true is not supported by this server", "echo")
    prompt = body.prompt
    if isinstance(prompt, list):
      if len(prompt) != 1:
        raise RequestError(f"one prompt per request, not {len(prompt)}",
                           "prompt")
      prompt = prompt[0]
    gen, usage = await complete(lambda: prompt, body, body.max_tokens,
                                body.logprobs or 0)
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
        "created": int(time.time()), "model": name,
        "system_fingerprint": None,
        "choices": [{
            "index": 0, "finish_reason": gen["finish_reason"],
            "text": tokenizer.decode(gen["ids"]),
            "logprobs": completion_logprobs(tokenizer, gen)
                        if body.logprobs is not None else None}],
        "usage": usage}

  return api


# ---------------------------------------------------------------------------
# The command line. Flags are defined only when this module is the program,
# so that importing it leaves the importer's flags alone.
# ---------------------------------------------------------------------------


def define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("model", None, "A .gguf file, a directory with one, a "
                      "GPT teacher directory, or 'default' (the packaged "
                      "SmolLM2).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind.")
  flags.DEFINE_integer("port", 8000, "Port to bind.")
  flags.DEFINE_string("served_model_name", "",
                      "Model id clients ask for; default from --model.")
  flags.DEFINE_integer("max_batch", 16, "Rows per forward at most.")
  flags.DEFINE_float("batch_wait_ms", 5.0,
                     "How long a forward waits for more requests.")
  flags.DEFINE_integer("max_length", 512,
                       "Context: prompt + max_tokens tokens at most.")
  flags.DEFINE_integer("max_request_bytes", MAX_REQUEST_BYTES,
                       "Request bodies over this get 413, unread.")
  flags.DEFINE_string("log_level", "warning", "uvicorn's log level.")


def main(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f"serve: unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.model is None:
    sys.exit("serve: --model is required (a .gguf file, a directory with "
             "one, a GPT teacher directory, or 'default')")
  try:
    name, config, params, tokenizer = load_model(f.model)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"serve: {type(e).__name__}: {e}".splitlines()[0])
  import uvicorn  # pylint: disable=g-import-not-at-top
  from dashclip_jax.curation import serve_batching  # pylint: disable=g-import-not-at-top
  from dashclip_jax.serving import batching  # pylint: disable=g-import-not-at-top
  try:
    engine = serve_batching.Engine(config, params, tokenizer.pad_id,
                                   max_batch=f.max_batch,
                                   max_length=f.max_length)
  except ValueError as e:
    sys.exit(f"serve: {e}")
  batcher = batching.Batcher(engine.next_logprobs, engine.max_batch,
                             f.batch_wait_ms / 1000)
  name = f.served_model_name or name
  print(f"serving {name} on http://{f.host}:{f.port}/v1 (batch buckets "
        f"{engine.batch_sizes}, length buckets {engine.lengths})", flush=True)
  uvicorn.run(make_app(name, tokenizer, engine, batcher,
                       f.max_request_bytes),
              host=f.host, port=f.port, log_level=f.log_level)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
