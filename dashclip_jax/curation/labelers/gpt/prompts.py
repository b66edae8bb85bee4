"""The labelling prompt for one tokenizer: (query, product) -> chat text ->
left-padded ids (the wording itself is `curation.labelers.wording`'s).

A template with `{query}` and `{product}` (the product as one "field:
value" line per configured field) becomes the user turn of the model's
chat template, after a short system turn, with the assistant's turn opened:
the next token is the answer, one of the label tokens "0", "1", "2".
A prompt over `max_length` tokens has its product text cut to fit (counted
in `truncated`). Rows are left-padded, so every row's next token is the
last column, to a multiple of `length_multiple` tokens (few shapes, few
compiles).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from dashclip_jax.curation.labelers import wording
from dashclip_jax.curation.labelers.gpt import tokenizer as tokenizer_lib


class Prompts:
  """Renders and encodes labelling prompts for one tokenizer."""

  def __init__(self, tokenizer: tokenizer_lib.GptTokenizer,
               fields: Sequence[str] = ("title",),
               template: str = wording.DEFAULT_PROMPT,
               system: str = wording.DEFAULT_SYSTEM,
               max_length: int = 128, length_multiple: int = 16):
    wording.check_template(template)
    self.tokenizer, self.fields = tokenizer, tuple(fields)
    self.template, self.system = template, system
    self.max_length, self.length_multiple = max_length, length_multiple
    self.label_ids = np.asarray(
        [tokenizer.token_id(t) for t in wording.LABEL_TOKENS], np.int32)
    self.truncated = 0

  def chat(self, text: str) -> str:
    """`text` as the user turn after the system turn (`system`, or the
    template's default when empty), the assistant's turn opened: the
    model's chat template, or the bare text when it has none."""
    if not self.tokenizer.chat_template:
      return text
    system = ([{"role": "system", "content": self.system}] if self.system
              else [])
    return self.tokenizer.apply_chat_template(
        system + [{"role": "user", "content": text}],
        add_generation_prompt=True)

  def texts(self, queries: Sequence[str],
            products: Sequence[dict[str, Any]]) -> list[str]:
    """The prompt texts of (query, product) pairs, each within max_length
    tokens (the product text cut when needed)."""
    blocks = [wording.product_block(p, self.fields) for p in products]
    out = [self.chat(self.template.format(query=q, product=b))
           for q, b in zip(queries, blocks)]
    for i, ids in enumerate(self.tokenizer.encode(out)):
      if len(ids) > self.max_length:
        out[i] = self._fit(queries[i], blocks[i], len(ids))
        self.truncated += 1
    return out

  def _fit(self, query: str, block: str, length: int) -> str:
    ids = self.tokenizer.encode([block])[0]
    keep = len(ids) - (length - self.max_length)
    while keep > 0:
      text = self.chat(self.template.format(
          query=query, product=self.tokenizer.decode(ids[:keep])))
      if len(self.tokenizer.encode([text])[0]) <= self.max_length:
        return text
      keep -= 1  # A cut can re-merge tokens at the boundary.
    raise ValueError(f"the prompt for query {query[:40]!r} exceeds "
                     f"max_length={self.max_length} tokens with no product "
                     "text at all")

  def encode(self, texts: Sequence[str], length: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded int32 (ids, mask) (N, L): L = `length`, or the longest
    text rounded up to length_multiple (at most max_length)."""
    rows = self.tokenizer.encode(texts)
    if length is None:
      m, longest = self.length_multiple, max((len(r) for r in rows),
                                             default=1)
      length = min(-(-longest // m) * m, self.max_length)
    for i, r in enumerate(rows):
      if not 0 < len(r) <= length:
        raise ValueError(f"prompt {i} has {len(r)} tokens; need 1 to "
                         f"{length}")
    ids = np.full((len(rows), length), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
      ids[i, length - len(r):], mask[i, length - len(r):] = r, 1
    return ids, mask
