"""BM25 vs a hand computation; BM25/MiniLM calibrated on the real catalog."""

import math
import os

import numpy as np
import pytest

from dashclip_jax.data import catalog_tables
from dashclip_jax.data import relevance_tables
from dashclip_jax.evaluation import baselines
from dashclip_jax.evaluation import metrics
from dashclip_jax.evaluation import qrels as qrels_lib

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                       "fashion")


def test_bm25_tokenize_lowercases_and_splits_hyphens():
  assert baselines.bm25_tokenize("Nike Men  Blue T-shirt\tX--y") == [
      "nike", "men", "blue", "t", "shirt", "x", "y"]


def test_bm25_matches_hand_computation():
  """Lucene idf, Robertson's (k1 + 1) weight; a repeated query term counts
  twice, an empty title and an empty query score 0, hyphens split."""
  docs = ["red shirt", "blue shirt shirt", "red red shoes boots", "", "T-shirt"]
  queries = ["red shirt", "boots", "hat", "red red", "", "t"]
  s = baselines.bm25_scores(queries, docs, k1=1.5, b=0.75)
  n, avgdl = 5, (2 + 3 + 4 + 0 + 2) / 5

  def term(tf, dl, df):
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    return idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * dl / avgdl))

  want = np.array([
      [term(1, 2, 2) + term(1, 2, 3), term(2, 3, 3), term(2, 4, 2), 0,
       term(1, 2, 3)],
      [0, 0, term(1, 4, 1), 0, 0],
      [0, 0, 0, 0, 0],
      [2 * term(1, 2, 2), 0, 2 * term(2, 4, 2), 0, 0],
      [0, 0, 0, 0, 0],
      [0, 0, 0, 0, term(1, 2, 1)]])
  np.testing.assert_allclose(s, want, rtol=1e-12)
  assert baselines.bm25_scores(["red"], ["", ""]).tolist() == [[0.0, 0.0]]


def test_minilm_embeddings_are_normalised_and_semantic():
  model = baselines.MiniLM()
  e = model.encode(["men black running shoes", "sports shoes for men",
                    "women gold necklace"])
  assert e.shape == (3, 384)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
  sim = e @ e.T
  assert sim[0, 1] > sim[0, 2] + 0.2


@pytest.mark.skipif(not os.path.exists(os.path.join(FASHION, "qrels_test.csv")),
                    reason="real fashion catalog not present")
def test_calibration_on_real_catalog():
  # Reference figures of the issue: BM25 0.727, MiniLM 0.781 (NDCG@10 over
  # the 600 test queries, every one of the 1,185 test products ranked).
  cat = catalog_tables.load_catalog(
      os.path.join(FASHION, "styles.csv")).subset("test")
  rel = relevance_tables.load_relevance(os.path.join(FASHION, "qrels_test.csv"),
                                        cat, max_bad_fraction=0.0)
  assert (len(cat), rel.num_queries) == (1185, 600)
  labels = qrels_lib.labels_from_relevance(rel)
  qids, texts = rel.query_ids, rel.queries
  bm25 = metrics.retrieval_metrics(
      metrics.rank_by_score(baselines.bm25_scores(texts, cat.titles)),
      labels, qids)
  minilm = metrics.retrieval_metrics(
      metrics.rank_by_score(baselines.minilm_scores(texts, cat.titles)),
      labels, qids)
  assert bm25["ndcg@10"] == pytest.approx(0.727, abs=0.01)
  assert minilm["ndcg@10"] == pytest.approx(0.781, abs=0.01)
