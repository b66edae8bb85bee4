"""Labelling through any OpenAI-compatible endpoint (vLLM, a llama.cpp
server, a hosted API), built on the `openai` package.

`OpenAICompatibleLabeler(base_url, model, **settings)` is a curation
`Labeler`. Each (query, product) pair is one request: the chat messages of
`wording.chat_messages` (api="chat"), or the bare prompt plus
`completion_suffix` (api="completions"), asking for `max_tokens` tokens and
the top `top_logprobs` alternatives of each. `answers` turns the answer
into probabilities: from the logprobs where the server gives them, from the
text otherwise.

Around each request:
  cache        answers that parsed, under `llm_cache.request_key` (api,
               model, messages or prompt, sampling params), in
               `cache_path`: a rerun or a resumed job pays only for pairs
               never answered;
  concurrency  `concurrency` worker threads per `predict` call (so give
               label.batch_size >= concurrency), their starts paced to
               `rps` per second;
  retries      429, 5xx, timeouts and connection errors, up to
               `max_retries` times with exponential backoff and jitter (a
               429's Retry-After honoured up to max_backoff_s), counted by
               kind; any other status (401, 404, ...) stops at once;
  budget       at most `budget` requests sent, retries included (0: no
               limit). When it is spent `BudgetSpent` is raised once the
               answers in flight are cached, so the committed shards and
               the cache keep everything answered.

A malformed answer (no label token in its logprobs, no 0/1/2 in its text)
is never guessed. Its row is NaN, which `label_shards.label_pairs` skips from
the shard (counted); it is not cached, so a later run asks again; and
`summary()` names it (query, product_id, the answer text, truncated).
`predict` sees no query ids, so the query is named by its text.

The API key is read from the environment variable `api_key_env` names
("": none, for a local server) and handed only to the HTTP client: it is in
no log line, cache row, teacher_id, summary or error message.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures_lib
import dataclasses
import hashlib
import json
import logging
import os
import random
import threading
import time
from typing import Any, Sequence

import numpy as np
import openai

from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.curation.labelers import wording
from dashclip_jax.curation.labelers.openai_client import answers as llm_answers
from dashclip_jax.curation.labelers.openai_client import cache as llm_cache
from dashclip_jax.curation.labelers.openai_client import rate_limit

log = logging.getLogger("dashclip_jax")

APIS = ("chat", "completions")
RETRY_KINDS = ("429", "5xx", "timeout", "connection")
# Settings that change the answer (with the model and the pair's text).
ASKED = ("api", "fields", "template", "system", "completion_suffix",
         "max_tokens", "temperature", "top_logprobs", "seed")
ANSWER_CHARS, LOGGED_MALFORMED = 200, 10


class EndpointError(RuntimeError):
  """The endpoint refused a request, or kept failing past the retries."""


class BudgetSpent(RuntimeError):
  """The request budget ran out; what was answered is kept."""


@dataclasses.dataclass(frozen=True)
class ClientSettings:
  """What the client asks (ASKED) and how it paces and retries."""
  api: str = "chat"
  api_key_env: str = "OPENAI_API_KEY"  # "": the endpoint needs no key.
  fields: tuple[str, ...] = ("title",)
  template: str = wording.DEFAULT_PROMPT
  system: str = wording.DEFAULT_SYSTEM  # "": no system turn.
  completion_suffix: str = "\nAnswer:"  # After the prompt (completions).
  max_tokens: int = 1
  temperature: float = 0.0
  top_logprobs: int = 5                 # 0: ask for none (text only).
  seed: int | None = None
  concurrency: int = 8
  rps: float = 0.0                      # 0: no limit.
  max_retries: int = 6
  backoff_s: float = 0.5
  max_backoff_s: float = 30.0
  timeout_s: float = 60.0
  budget: int = 0                       # Requests; 0: no limit.
  cache_path: str = ""                  # "": no cache.
  max_named: int = 100                  # Malformed answers named.

  def __post_init__(self):
    wording.check_template(self.template)
    object.__setattr__(self, "fields", tuple(self.fields))
    if self.api not in APIS:
      raise ValueError(f"api {self.api!r} not in {APIS}")
    for name, low in (("max_tokens", 1), ("concurrency", 1),
                      ("top_logprobs", 0), ("rps", 0), ("max_retries", 0),
                      ("backoff_s", 0), ("max_backoff_s", 0), ("budget", 0),
                      ("max_named", 0), ("temperature", 0)):
      if getattr(self, name) < low:
        raise ValueError(f"{name} must be >= {low}, not "
                         f"{getattr(self, name)!r}")
    if self.timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0, not {self.timeout_s!r}")


def _api_key(env_name: str) -> str:
  if not env_name:
    return ""
  key = os.environ.get(env_name, "")
  if not key:
    raise ValueError(f"environment variable {env_name} (api_key_env) is not "
                     "set: export the key there, or pass api_key_env=\"\" "
                     "for an endpoint that needs none")
  return key


def _retry_after(error: openai.APIStatusError) -> float:
  try:
    return max(0.0, float(error.response.headers.get("retry-after", 0)))
  except ValueError:  # An HTTP date: back off as usual.
    return 0.0


def _pair_name(query: str, product: dict[str, Any]) -> str:
  return f"query {query[:60]!r}, product {product.get('product_id', '?')}"


class OpenAICompatibleLabeler:
  """A curation `Labeler` asking an OpenAI-compatible endpoint."""

  def __init__(self, base_url: str, model: str, **settings: Any):
    if not base_url or not model:
      raise ValueError(f"base_url ({base_url!r}) and model ({model!r}) "
                       "must both be given")
    self.base_url, self.model = base_url.rstrip("/"), model
    self.settings = s = ClientSettings(**settings)
    self._api_key = _api_key(s.api_key_env)
    # Our own retries (counted by kind), not the package's.
    self._client = openai.OpenAI(base_url=self.base_url,
                                 api_key=self._api_key or "none",
                                 max_retries=0, timeout=s.timeout_s)
    self._cache = llm_cache.AnswerCache(s.cache_path) if s.cache_path else None
    self._limiter = rate_limit.RateLimiter(s.rps)
    self._budget = rate_limit.RequestBudget(s.budget)
    self._rng = random.Random()
    self._lock = threading.Lock()
    self._counts: collections.Counter = collections.Counter()
    self._retries = dict.fromkeys(RETRY_KINDS, 0)
    self._malformed: list[dict[str, str]] = []
    self._seconds = 0.0
    asked = json.dumps({k: getattr(s, k) for k in ASKED}, sort_keys=True)
    self.teacher_id = (f"openai:{model}:"
                       f"{hashlib.sha256(asked.encode()).hexdigest()[:12]}")

  def request(self, query: str, product: dict[str, Any]) -> dict[str, Any]:
    """The request body of one pair (the model and what ASKED names)."""
    s = self.settings
    body: dict[str, Any] = {"model": self.model, "max_tokens": s.max_tokens,
                            "temperature": s.temperature}
    if s.seed is not None:
      body["seed"] = s.seed
    if s.api == "chat":
      body["messages"] = wording.chat_messages(query, product, s.fields,
                                               s.template, s.system)
      if s.top_logprobs:
        body.update(logprobs=True, top_logprobs=s.top_logprobs)
    else:
      body["prompt"] = wording.relevance_prompt(
          query, product, s.fields, s.template) + s.completion_suffix
      if s.top_logprobs:
        body["logprobs"] = s.top_logprobs
    return body

  def predict(self, queries: Sequence[str],
              products: Sequence[dict[str, Any]]) -> np.ndarray:
    """float32 (B, 3) label probabilities; NaN rows for malformed answers.
    Raises BudgetSpent or EndpointError after caching what was answered."""
    if len(queries) != len(products):
      raise ValueError(f"{len(queries)} queries for {len(products)} "
                       "products")
    start = time.perf_counter()
    bodies = [self.request(q, p) for q, p in zip(queries, products)]
    keys = [llm_cache.request_key({"api": self.settings.api, **b})
            for b in bodies]
    answers = {} if self._cache is None else {
        k: llm_answers.Answer.from_json(v)
        for k, v in self._cache.get(keys).items()}
    self._count("cache_hits", sum(k in answers for k in keys))
    todo = {}
    for key, body, query, product in zip(keys, bodies, queries, products):
      if key not in answers and key not in todo:  # Each distinct one once.
        todo[key] = (body, _pair_name(query, product))
    error = self._fetch(todo, answers) if todo else None
    if error is not None:
      self._seconds += time.perf_counter() - start
      raise error
    probs = np.full((len(keys), labeler_lib.NUM_LABELS), np.nan, np.float32)
    for i, key in enumerate(keys):
      p, source = llm_answers.label_probs(answers[key])
      if p is None:
        self._name_malformed(queries[i], products[i], answers[key].text)
      else:
        probs[i] = p
        self._count(source)
    self._count("pairs", len(keys))
    self._seconds += time.perf_counter() - start
    return probs

  def _fetch(self, todo: dict[str, tuple[dict, str]],
             answers: dict[str, llm_answers.Answer]) -> Exception | None:
    """Asks for `todo`'s requests on worker threads, filling `answers` and
    the cache as they come -> the first error, the rest stopped."""
    stop, error = threading.Event(), None
    workers = min(self.settings.concurrency, len(todo))
    with futures_lib.ThreadPoolExecutor(workers, "llm-labeler") as pool:
      futures = {pool.submit(self._ask, body, name, stop): key
                 for key, (body, name) in todo.items()}
      try:
        for future in futures_lib.as_completed(futures):
          try:
            answer = future.result()
          except Exception as e:  # pylint: disable=broad-except
            error = error or e
            stop.set()
            continue
          if answer is None:  # Stopped before it was asked.
            continue
          key = futures[future]
          answers[key] = answer
          if (self._cache is not None and
              llm_answers.label_probs(answer)[0] is not None):
            self._cache.put(key, answer.to_json())
      finally:
        stop.set()
        for future in futures:
          future.cancel()
    return error

  def _ask(self, body: dict[str, Any], name: str, stop: threading.Event
           ) -> llm_answers.Answer | None:
    """One pair's answer, retried; None when stopped first."""
    s = self.settings
    for attempt in range(s.max_retries + 1):
      if stop.is_set():
        return None
      if not self._budget.take():
        raise BudgetSpent(
            f"request budget of {s.budget} requests to {self.base_url} "
            f"spent ({self._counts['answers']} answered); what was labelled "
            "is kept (written shards, the answer cache): rerun with a "
            "larger budget to go on")
      self._limiter.acquire()
      self._count("requests")
      wait = 0.0
      try:
        return self._call(body)
      except openai.RateLimitError as e:
        kind, wait = "429", _retry_after(e)
      except openai.InternalServerError:
        kind = "5xx"
      except openai.APITimeoutError:
        kind = "timeout"
      except openai.APIConnectionError:
        kind = "connection"
      except openai.APIStatusError as e:
        raise EndpointError(self._redact(
            f"{self.base_url} answered HTTP {e.status_code} for {name}: "
            f"{e.message}")[:500]) from None
      if attempt == s.max_retries:
        raise EndpointError(
            f"{self.base_url}: {kind} on all {attempt + 1} tries for {name}; "
            "check the endpoint, or raise max_retries")
      with self._lock:
        self._retries[kind] += 1
      delay = rate_limit.backoff_delay(attempt, s.backoff_s, s.max_backoff_s,
                                       self._rng)
      if stop.wait(max(delay, min(wait, s.max_backoff_s))):
        return None
    raise AssertionError("unreachable")

  def _call(self, body: dict[str, Any]) -> llm_answers.Answer:
    if self.settings.api == "chat":
      response = self._client.chat.completions.create(**body)
      parse = llm_answers.from_chat
    else:
      response = self._client.completions.create(**body)
      parse = llm_answers.from_completion
    self._count("answers")
    try:
      return parse(response)
    except (AttributeError, IndexError, TypeError):  # No choice, no text.
      return llm_answers.Answer("")

  def _count(self, name: str, n: int = 1) -> None:
    with self._lock:
      self._counts[name] += n

  def _redact(self, text: str) -> str:
    return text.replace(self._api_key, "***") if self._api_key else text

  def _name_malformed(self, query: str, product: dict[str, Any],
                      text: str) -> None:
    named = {"query": self._redact(query[:80]),
             "product_id": str(product.get("product_id", "")),
             "answer": self._redact(text[:ANSWER_CHARS])}
    with self._lock:
      self._counts["malformed"] += 1
      n = self._counts["malformed"]
      if len(self._malformed) < self.settings.max_named:
        self._malformed.append(named)
    if n <= LOGGED_MALFORMED:
      log.warning("malformed answer (no label 0/1/2), pair skipped: query "
                  "%r, product %s: %r%s", named["query"],
                  named["product_id"], named["answer"],
                  "; further ones are only counted" if
                  n == LOGGED_MALFORMED else "")

  def summary(self) -> dict[str, Any]:
    """What the labelling cost and met: counts, retries by kind, the
    malformed answers named, the budget, pairs/s (no key, no prompts)."""
    s, c = self.settings, self._counts
    labelled = c[llm_answers.LOGPROBS] + c[llm_answers.TEXT]
    return {
        "endpoint": self.base_url, "model": self.model, "api": s.api,
        "teacher_id": self.teacher_id, "pairs": c["pairs"],
        "labelled": labelled, "from_logprobs": c[llm_answers.LOGPROBS],
        "from_text": c[llm_answers.TEXT], "requests": c["requests"],
        "answers": c["answers"], "cache_hits": c["cache_hits"],
        "retries": dict(self._retries), "malformed": c["malformed"],
        "malformed_pairs": list(self._malformed),
        "budget": s.budget or None, "budget_used": self._budget.used,
        "seconds": round(self._seconds, 3),
        "pairs_per_s": round(labelled / self._seconds, 2)
                       if self._seconds > 0 else 0.0}

  def write_summary(self, path: str) -> None:
    """summary() as JSON at `path`, landed by rename."""
    with open(path + ".tmp", "w") as f:
      json.dump(self.summary(), f, indent=2)
    os.replace(path + ".tmp", path)

  def close(self) -> None:
    self._client.close()
    if self._cache is not None:
      self._cache.close()
