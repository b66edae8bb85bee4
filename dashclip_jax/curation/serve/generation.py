"""Token by token generation through the batcher (greedy or sampled, top_p),
and OpenAI's logprobs blocks of its result."""

from __future__ import annotations

from typing import Any

import numpy as np


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
