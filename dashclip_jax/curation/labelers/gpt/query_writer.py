"""Shopping queries written by the GGUF LLM (SmolLM2-135M-Instruct by
default): a few-shot chat prompt per product, sampled in jitted batches
(`sampling.sample`).

The shots are seed pairs (a seed query and the title of a product it
labels 2), a seeded choice per draft, so the model sees how a title turns
into a query; the instruction asks for everyday words, not the title's.
Drafts come back raw (first line, quotes stripped): the step filters and
de-duplicates them (`curation.query_writers`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import jax
import numpy as np

from dashclip_jax.curation.labelers.gpt import gguf_loader
from dashclip_jax.curation.labelers.gpt import sampling
from dashclip_jax.curation.labelers.gpt import tokenizer as tokenizer_lib

log = logging.getLogger("dashclip_jax")

SYSTEM = "You write short shopping search queries."
INSTRUCTION = ("Write a short search query (2 to 6 words) that a shopper "
               "would type to find the product. Use everyday words, not the "
               "words of the product title.")


class LlmWriter:
  """Drafts queries for product titles with a GGUF decoder LM."""

  def __init__(self, gguf: str = "", *, shots: Sequence[tuple[str, str]],
               num_shots: int = 3, batch_size: int = 16,
               new_tokens: int = 12, temperature: float = 0.8,
               top_p: float = 0.95, max_prompt_length: int = 192,
               seed: int = 0, dtype: str = "float32"):
    """shots: (product title, query) pairs the few-shot examples come from
    (at least one)."""
    if not shots:
      raise ValueError("the LLM writer needs few-shot (title, query) pairs "
                       "(seed queries with a label-2 product); none given")
    loaded = gguf_loader.load_gguf(gguf, dtype=dtype)
    self.config, self.tokenizer = (loaded.config,
                                   tokenizer_lib.from_metadata(loaded.metadata))
    self.params = jax.device_put(loaded.params)
    self.shots, self.num_shots = list(shots), num_shots
    self.batch_size, self.new_tokens = batch_size, new_tokens
    self.temperature, self.top_p, self.seed = temperature, top_p, seed
    self.max_prompt_length = max_prompt_length
    stops = {self.tokenizer.eos_id}
    for text in ("<|im_end|>", "\n", "Ċ"):
      try:
        stops.add(self.tokenizer.token_id(text))
      except ValueError:
        pass  # Not one token in this vocabulary.
    self.stop_ids = stops

  def prompt(self, title: str, draft: int) -> str:
    """The chat prompt for draft number `draft` (its shots are a seeded
    choice by that number) of the product titled `title`."""
    rng = np.random.default_rng([self.seed, draft])
    pick = rng.choice(len(self.shots), min(self.num_shots, len(self.shots)),
                      replace=False)
    shots = "\n".join(f"Product: {self.shots[j][0]}\nQuery: {self.shots[j][1]}"
                      for j in pick.tolist())
    user = f"{INSTRUCTION}\n\n{shots}\nProduct: {title}\nQuery:"
    if not self.tokenizer.chat_template:
      return user
    return self.tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM},
         {"role": "user", "content": user}], add_generation_prompt=True)

  def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded int32 (B, P); P: a multiple of 32 (few compiles)."""
    rows = self.tokenizer.encode(texts)
    longest = max(len(r) for r in rows)
    if longest > self.max_prompt_length:
      raise ValueError(f"a generation prompt has {longest} tokens, over "
                       f"generate.llm.max_prompt_length="
                       f"{self.max_prompt_length} (a long title or shot)")
    length = min(-(-longest // 32) * 32, self.max_prompt_length)
    ids = np.full((len(rows), length), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
      ids[i, length - len(r):], mask[i, length - len(r):] = r, 1
    return ids, mask

  def drafts(self, titles: Sequence[str], draft_numbers: Sequence[int]
             ) -> list[str]:
    """One raw draft per (title, global draft number); a draft's number
    seeds its shots and its sampling, so it is the same in any batch."""
    out = []
    b = self.batch_size
    for s in range(0, len(titles), b):
      chunk = [self.prompt(t, d) for t, d in
               zip(titles[s:s + b], draft_numbers[s:s + b])]
      numbers = list(draft_numbers[s:s + b])
      real = len(chunk)
      chunk += [chunk[-1]] * (b - real)  # One batch shape: one compile.
      numbers += [numbers[-1]] * (b - real)
      ids, mask = self._encode(chunk)
      tokens = sampling.sample(
          self.params, ids, mask, sampling.row_keys(self.seed, numbers),
          config=self.config, new_tokens=self.new_tokens,
          temperature=self.temperature, top_p=self.top_p)
      rows = sampling.cut_at_stop(np.asarray(tokens)[:real], self.stop_ids)
      out += [self.tokenizer.decode(r) for r in rows]
    return out
