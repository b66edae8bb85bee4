"""Text-only baselines over product titles: BM25 and MiniLM-L6 mean pooling.

Both score Q queries against N titles, ranked like every other system
(`metrics.rank_by_score`'s tie rule); `bm25_topk` keeps the top k per query
without a (Q, N) matrix.
"""

import os
import re
from typing import Callable, Sequence

import numpy as np

from dashclip_jax.convert import pretrained

_SPLIT = re.compile(r"[\s\-]+")


def bm25_tokenize(text: str) -> list[str]:
  """Lower-cased whitespace tokens, hyphens split ("T-shirt" -> t, shirt)."""
  return [t for t in _SPLIT.split(text.lower()) if t]


def bm25_scorer(docs: Sequence[str], k1: float = 1.5, b: float = 0.75
                ) -> Callable[[Sequence[str]], np.ndarray]:
  """Okapi BM25 over `docs`, by `bm25s`: a function of queries -> scores.

  bm25s's "lucene" variant: idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
  (non-negative, so a term in more than half the titles still counts a
  little) and term weight tf / (tf + k1 (1 - b + b dl / avgdl)), times
  (k1 + 1) for Robertson's form (the same ranking). A query term repeated in
  the query counts once per occurrence. Tokens: `bm25_tokenize`. The index
  is built once; the returned function gives float64 (len(queries), N).
  """
  # Imported on first use: bm25s pulls in scipy (seconds) for one baseline.
  import bm25s  # pylint: disable=g-import-not-at-top
  n = len(docs)
  toks = [bm25_tokenize(d) for d in docs]
  index = None
  if any(toks):  # bm25s cannot index an empty corpus; no term would match.
    index = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
    index.index(toks, show_progress=False)

  def score(queries: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(queries), n))
    for i, q in enumerate(queries):
      if index is not None and (q_toks := bm25_tokenize(q)):
        out[i] = (k1 + 1.0) * index.get_scores(q_toks)  # Empty query: 0.
    return out

  return score


def bm25_scores(queries: Sequence[str], docs: Sequence[str],
                k1: float = 1.5, b: float = 0.75) -> np.ndarray:
  """float64 (Q, N) BM25 of every document for every query (`bm25_scorer`).

  Dense: for small catalogs and a few rows; `bm25_topk` ranks at scale.
  """
  return bm25_scorer(docs, k1, b)(queries)


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
  """int64 (R, k) top-k columns of float (R, N) scores, best first, equal
  scores by ascending column: `metrics.rank_by_score(scores, k)` without
  sorting whole rows (a partition finds each row's k-th score)."""
  r, n = scores.shape
  if not 1 <= k <= n:
    raise ValueError(f"k={k} must be in [1, {n}]")
  kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]  # (R, 1)
  above = scores > kth
  # Of the scores equal to the k-th, the lowest columns fill the k slots.
  tied = scores == kth
  room = k - above.sum(axis=1, keepdims=True)
  keep = above | (tied & (np.cumsum(tied, axis=1) <= room))
  cols = np.nonzero(keep)[1].reshape(r, k)  # k per row, ascending.
  # A stable sort of the candidates (in column order) keeps the tie rule.
  order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1,
                     kind="stable")
  return np.take_along_axis(cols, order, axis=1)


def bm25_topk(queries: Sequence[str], k: int,
              scorer: Callable[[Sequence[str]], np.ndarray],
              num_docs: int, block_bytes: int = 64 << 20
              ) -> np.ndarray:
  """int64 (Q, k) BM25 top-k per query, as `rank_by_score(bm25_scores, k)`.

  Scores a block of queries at a time (at most `block_bytes` of float64
  scores), so memory is bounded by the block and the (Q, k) output, never a
  (Q, N) matrix.

  Args:
    queries: Q query texts.
    k: products kept per query, 1 <= k <= num_docs.
    scorer: `bm25_scorer(docs)`.
    num_docs: N, the number of documents the scorer ranks.
    block_bytes: bound on one block of scores.
  """
  rows = max(1, block_bytes // (8 * max(num_docs, 1)))
  out = np.zeros((len(queries), k), np.int64)
  for s in range(0, len(queries), rows):
    out[s:s + rows] = topk_rows(scorer(queries[s:s + rows]), k)
  return out


class MiniLM:
  """all-MiniLM-L6-v2 sentence embeddings: BERT, masked mean pool, L2 norm.

  Loaded offline with transformers' BertModel from the wheel's safetensors;
  nothing touches the hub.
  """

  def __init__(self, model_dir: str | None = None, max_length: int = 128):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Optional heavy extras ([torch]): only this baseline needs them.
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    model_dir = model_dir or pretrained.minilm_dir()
    self._torch = torch
    self.tokenizer = transformers.BertTokenizerFast.from_pretrained(
        model_dir, local_files_only=True)
    self.model = transformers.BertModel.from_pretrained(
        model_dir, local_files_only=True).eval()
    self.max_length = max_length

  def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """float32 (B, 384) L2-normalised embeddings."""
    torch = self._torch
    out = []
    with torch.inference_mode():
      for s in range(0, len(texts), batch_size):
        enc = self.tokenizer(list(texts[s:s + batch_size]), padding=True,
                             truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state  # (b, L, 384)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    if not out:
      return np.zeros((0, self.model.config.hidden_size), np.float32)
    return np.concatenate(out).astype(np.float32)


def minilm_scores(queries: Sequence[str], docs: Sequence[str],
                  model: MiniLM | None = None) -> np.ndarray:
  """Cosine similarities float32 (Q, N) of MiniLM query and title embeddings."""
  model = model or MiniLM()
  return model.encode(queries) @ model.encode(docs).T
