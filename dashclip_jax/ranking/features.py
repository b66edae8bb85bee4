"""Sessions -> one row per impression: the models' inputs and the label.

The production DCN's features (no embeddings):
  categorical  product id, article type, brand, colour, user segment
               (gender x history bucket 0 / 1-2 / 3-5 / 6+), position;
  numeric      the retriever's normalised BM25, the product's popularity,
               log(1 + purchases in the history window).
The embedding tower's inputs are indices into its tables: product, query,
and the history's products (-1 padded), gathered on the device.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dashclip_jax.ranking import catalog_data
from dashclip_jax.ranking import simulator

CATEGORICAL = ("product", "type", "brand", "colour", "segment", "position")
NUMERIC = ("bm25", "popularity", "history_length")
HISTORY_BUCKETS = (1, 3, 6)  # Bucket edges of the segment's history part.


@dataclasses.dataclass
class Rows:
  """M impressions (numpy arrays, row-aligned).

  Attributes:
    inputs: the models' batch: categorical int32 (M, 6), numeric float32
      (M, 3), product, query int32 (M,), history int32 (M, H).
    click: float32 (M,) the label.
    p_click: float32 (M,) the simulator's P(click) (the oracle's score).
    user: int32 (M,) who saw it (the bootstrap resamples users).
    has_history: bool (M,) whether the user had bought anything in the
      window before the session (the table's split).
    vocab: int sizes of the categorical features, in CATEGORICAL order.
  """
  inputs: dict[str, np.ndarray]
  click: np.ndarray
  p_click: np.ndarray
  user: np.ndarray
  has_history: np.ndarray
  vocab: tuple[int, ...]

  def __len__(self) -> int:
    return len(self.click)


def segment_vocab(num_genders: int) -> int:
  return num_genders * (len(HISTORY_BUCKETS) + 1)


def rows(sessions: simulator.Sessions, data: catalog_data.RankingData,
         days: tuple[int, int]) -> Rows:
  """The impressions of sessions on days [first, last]."""
  s = np.flatnonzero((sessions.day >= days[0]) & (sessions.day <= days[1]))
  k = sessions.product.shape[1]
  product = sessions.product[s].reshape(-1)
  each = lambda x: np.repeat(x[s], k, axis=0)  # Session -> its K rows.
  length = each(sessions.history_length)
  bucket = np.searchsorted(np.asarray(HISTORY_BUCKETS), length, side="right")
  num_genders = len(data.names["gender"])
  segment = sessions.user_gender[each(sessions.user)] * (
      len(HISTORY_BUCKETS) + 1) + bucket
  position = np.tile(np.arange(k), len(s))
  categorical = np.stack([
      product, data.codes["type"][product], data.codes["brand"][product],
      data.codes["colour"][product], segment, position], axis=1)
  numeric = np.stack([sessions.bm25[s].reshape(-1),
                      sessions.popularity[product],
                      np.log1p(length)], axis=1)
  vocab = (data.num_products, len(data.names["type"]),
           len(data.names["brand"]), len(data.names["colour"]),
           segment_vocab(num_genders), k)
  return Rows(
      inputs=dict(categorical=categorical.astype(np.int32),
                  numeric=numeric.astype(np.float32),
                  product=product.astype(np.int32),
                  query=each(sessions.query).astype(np.int32),
                  history=each(sessions.history).astype(np.int32)),
      click=sessions.click[s].reshape(-1).astype(np.float32),
      p_click=sessions.p_click[s].reshape(-1),
      user=each(sessions.user).astype(np.int32),
      has_history=length > 0, vocab=vocab)
