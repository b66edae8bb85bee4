"""The evaluation at catalog scale: bounded top-k rankings (BM25 included)
equal the dense full sort, and the report marks what a depth cuts short."""

import os

import ml_collections
import numpy as np
import pytest

from dashclip_jax.evaluation import baselines
from dashclip_jax.evaluation import eval_data
from dashclip_jax.evaluation import metrics
from dashclip_jax.evaluation import qrels as qrels_lib
from dashclip_jax.evaluation import report as report_lib


@pytest.mark.parametrize("seed", range(3))
def test_topk_rows_is_the_stable_sort_prefix(seed):
  """Many equal scores (4 values): ties at the k-th score go to the lower
  columns, as the dense stable sort has them."""
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, 4, (5, 37)).astype(np.float64)
  for k in (1, 2, 10, 36, 37):
    np.testing.assert_array_equal(baselines.topk_rows(scores, k),
                                  metrics.rank_by_score(scores, k))


def test_bm25_topk_equals_the_dense_ranking():
  docs = ["red shirt", "blue shirt", "red shirt", "", "blue jeans",
          "red red shoes", "shirt", "blue shirt"] * 3  # Exact duplicates.
  queries = ["red shirt", "", "blue", "hat", "shirt shirt", "jeans red"]
  dense = metrics.rank_by_score(baselines.bm25_scores(queries, docs))
  scorer = baselines.bm25_scorer(docs)
  for k in (1, 5, len(docs)):
    # block_bytes: one query per block, then all in one.
    for block in (1, 1 << 20):
      got = baselines.bm25_topk(queries, k, scorer, len(docs),
                                block_bytes=block)
      np.testing.assert_array_equal(got, dense[:, :k])
  empty = baselines.bm25_scorer(["", ""])
  np.testing.assert_array_equal(baselines.bm25_topk(["red"], 2, empty, 2),
                                [[0, 1]])


class _Catalog:
  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n


def _report(tmp_path, depth, n=6):
  cfg = ml_collections.ConfigDict(dict(
      checkpoint="ckpt", init_checkpoint="", knn=dict(depth=depth),
      data=dict(probe_split="train", max_probe_products=10, split="test")))
  data = eval_data.EvalData(
      _Catalog(n), qrels_lib.SparseQrels.from_dense(np.full((1, n), 2)),
      ["q"], ["q"], None, "data")
  results = {"x": {"ndcg@10": 0.5, "recall@5": 0.5, "recall@50": 0.5,
                   "mrr": 0.5}}
  report_lib.write_report(results, data, cfg, str(tmp_path))
  with open(os.path.join(tmp_path, "report.md")) as f:
    return f.read()


def test_report_marks_the_metrics_a_depth_truncates(tmp_path):
  text = _report(tmp_path, depth=3)
  assert "| system | ndcg@10† | recall@5† | recall@50† | mrr† |" in text
  assert ("Ranking depth: 3 of 6 products per query" in text
          and "MRR is MRR@3" in text)
  # The whole catalog ranked (depth 0, or one past N): nothing truncated.
  for depth in (0, 7):
    text = _report(tmp_path, depth=depth)
    assert "| system | ndcg@10 | recall@5 | recall@50 | mrr |" in text
    assert "Ranking depth: 6 of 6 products" in text and "†" not in text


def _eval_config(arg):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "eval_config", os.path.join(os.path.dirname(__file__), "..", "configs",
                                  "eval.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_load_data_qrels_are_the_dense_labels_of_what_is_ranked():
  """Unreadable products dropped (columns renumbered), queries left without
  a readable label 2 dropped: the dense reference sliced the same way."""
  from dashclip_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  cfg = _eval_config("synthetic")
  cfg.data.synthetic = dict(num_products=120, num_test_queries=30,
                            image_size=16, seed=0, bad_images=12)
  cfg.probes.aisle = False
  data = eval_data.load_data(cfg)
  syn = synthetic.synthetic_data(**cfg.data.synthetic)
  rel = syn.test
  labels = qrels_lib.labels_from_relevance(rel)
  ok = np.isin(list(syn.test_catalog.ids), list(data.catalog.ids))
  kept = (labels[:, ok] == 2).any(axis=1)
  assert not ok.all() and not kept.all()  # Both drops happen here.
  assert data.query_ids == [q for q, k in zip(rel.query_ids, kept) if k]
  np.testing.assert_array_equal(data.qrels.to_dense(), labels[kept][:, ok])
  # Listed label-0 pairs stay listed (the gallery's "judged").
  listed = np.zeros(labels.shape, bool)
  listed[np.asarray(rel.query), np.asarray(rel.product)] = True
  judged = np.zeros(data.qrels.shape, bool)
  judged[data.qrels.query_of_pair(), data.qrels.product] = True
  np.testing.assert_array_equal(judged, listed[kept][:, ok])
