"""An LLM's answer to the relevance question -> label probabilities.

An `Answer` keeps what a chat or completions response says that matters:
the text, and per generated token the token and its top alternatives'
logprobs (the token's own included). From it:

  logprobs  at the first generated token that is a label ("0", "1", "2",
            whitespace stripped), the softmax over the three labels'
            logprobs among the alternatives there. Alternatives that strip
            to the same label (" 2", "2") are summed (log-sum-exp). A label
            absent from the top-k gets logprob -inf, probability 0: its
            true probability is below the k-th alternative's, and guessing
            a floor would invent mass the server never reported.
  text      otherwise (no logprobs, or none at a label token): a one-hot of
            the first 0, 1 or 2 in the text standing alone (not in "10").
  malformed neither: no probabilities at all (the caller counts and names
            it; it is never guessed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import numpy as np

from dashclip_jax.curation.labelers import wording

LOGPROBS, TEXT = "logprobs", "text"
_LABEL_RE = re.compile(r"(?<![0-9])[012](?![0-9])")


@dataclasses.dataclass(frozen=True)
class Answer:
  text: str
  # Per generated token: (token, {alternative: logprob}).
  tokens: tuple[tuple[str, dict[str, float]], ...] = ()

  def to_json(self) -> str:
    return json.dumps({"text": self.text,
                       "tokens": [[t, alts] for t, alts in self.tokens]})

  @classmethod
  def from_json(cls, text: str) -> "Answer":
    d = json.loads(text)
    return cls(d["text"], tuple((t, alts) for t, alts in d["tokens"]))


def _merged(pairs) -> dict[str, float]:
  out: dict[str, float] = {}
  for token, logprob in pairs:
    if token is None or logprob is None:
      continue
    logprob = float(logprob)
    out[token] = (np.logaddexp(out[token], logprob) if token in out
                  else logprob)
  return out


def from_chat(response: Any) -> Answer:
  """A chat completion (the openai package's object) -> Answer."""
  choice = response.choices[0]
  content = (choice.logprobs.content if choice.logprobs is not None
             and choice.logprobs.content else [])
  tokens = []
  for t in content:
    alts = _merged((a.token, a.logprob) for a in t.top_logprobs or [])
    alts.setdefault(t.token, float(t.logprob))
    tokens.append((t.token, alts))
  return Answer(choice.message.content or "", tuple(tokens))


def from_completion(response: Any) -> Answer:
  """A (text) completion -> Answer."""
  choice = response.choices[0]
  lp, tokens = choice.logprobs, []
  if lp is not None and lp.tokens:
    own = lp.token_logprobs or [None] * len(lp.tokens)
    top = lp.top_logprobs or [None] * len(lp.tokens)
    for token, logprob, alts in zip(lp.tokens, own, top):
      merged = _merged((alts or {}).items())
      if logprob is not None:
        merged.setdefault(token, float(logprob))
      tokens.append((token, merged))
  return Answer(choice.text or "", tuple(tokens))


def label_from_text(text: str) -> int | None:
  """The first standalone 0, 1 or 2 in the text, or None."""
  m = _LABEL_RE.search(text)
  return int(m.group()) if m else None


def probs_from_logprobs(answer: Answer) -> np.ndarray | None:
  """float32 (3,) softmax over the label logprobs at the first label
  token, or None when no generated token is a label."""
  for token, alts in answer.tokens:
    if token.strip() not in wording.LABEL_TOKENS:
      continue
    logprobs = np.full(len(wording.LABEL_TOKENS), -np.inf)
    for alt, logprob in alts.items():
      if alt.strip() in wording.LABEL_TOKENS and math.isfinite(logprob):
        i = wording.LABEL_TOKENS.index(alt.strip())
        logprobs[i] = np.logaddexp(logprobs[i], logprob)
    if not np.isfinite(logprobs.max()):
      return None  # Only non-finite logprobs reported: read the text.
    e = np.exp(logprobs - logprobs.max())
    return (e / e.sum()).astype(np.float32)
  return None


def label_probs(answer: Answer) -> tuple[np.ndarray | None, str]:
  """(float32 (3,) probabilities, LOGPROBS | TEXT), or (None, "") for a
  malformed answer."""
  probs = probs_from_logprobs(answer)
  if probs is not None:
    return probs, LOGPROBS
  label = label_from_text(answer.text)
  if label is None:
    return None, ""
  return np.eye(len(wording.LABEL_TOKENS), dtype=np.float32)[label], TEXT
