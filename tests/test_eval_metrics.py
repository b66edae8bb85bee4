"""Retrieval metrics vs hand-computed cases; sharded KNN vs numpy; faiss ANN."""

import math

import jax
import numpy as np
import pytest

from dashclip_jax.evaluation import knn
from dashclip_jax.evaluation import metrics
from dashclip_jax.evaluation import qrels as qrels_lib
from dashclip_jax import index as index_lib

L2 = math.log2


def test_rank_by_score_breaks_ties_by_product_index():
  scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]])
  np.testing.assert_array_equal(metrics.rank_by_score(scores),
                                [[1, 3, 0, 2, 4]])
  np.testing.assert_array_equal(metrics.rank_by_score(scores, k=2), [[1, 3]])


def test_hand_computed_single_query():
  # Ranking: 0 (0.9), tie 1/2 (0.8) -> 1 first, 4 (0.5), 3 (0.1).
  labels = np.array([[0, 2, 1, 0, 2]])
  scores = np.array([[0.9, 0.8, 0.8, 0.1, 0.5]])
  m = metrics.retrieval_metrics(metrics.rank_by_score(scores), labels, ["q"])
  # Ranked labels 0, 2, 1, 2, 0; gains 0, 3, 1, 3, 0; ideal 2, 2, 1.
  dcg = 3 / L2(3) + 1 / L2(4) + 3 / L2(5)
  idcg = 3 / L2(2) + 3 / L2(3) + 1 / L2(4)
  assert m["ndcg@10"] == pytest.approx(dcg / idcg)
  assert m["recall@1"] == 0.0
  assert m["recall@5"] == 1.0
  assert m["mrr"] == 0.5
  # The tie decides: with product 2 ahead of 1 the answer changes, so the
  # deterministic tie rule matters.
  flipped = metrics.retrieval_metrics(np.array([[0, 2, 1, 4, 3]]), labels,
                                      ["q"])
  dcg2 = 1 / L2(3) + 3 / L2(4) + 3 / L2(5)
  assert flipped["ndcg@10"] == pytest.approx(dcg2 / idcg)
  assert flipped["mrr"] == pytest.approx(1 / 3)


def test_hand_computed_two_queries_and_depth():
  # 60 products; query a: label-2 at 3 and 55, label-1 at 0;
  # query b: one label 2 at product 59 ranked last by scores.
  labels = np.zeros((2, 60), int)
  labels[0, [3, 55]] = 2
  labels[0, 0] = 1
  labels[1, 59] = 2
  scores = -np.arange(60.0)[None].repeat(2, 0)  # Rank = product index.
  per = metrics.per_query_metrics(metrics.rank_by_score(scores), labels,
                                  ["a", "b"])
  np.testing.assert_allclose(per["recall@1"], [0, 0])
  np.testing.assert_allclose(per["recall@5"], [0.5, 0])
  np.testing.assert_allclose(per["recall@50"], [0.5, 0])
  np.testing.assert_allclose(per["mrr"], [1 / 4, 1 / 60])
  ndcg_a = (1 / L2(2) + 3 / L2(5)) / (3 / L2(2) + 3 / L2(3) + 1 / L2(4))
  np.testing.assert_allclose(per["ndcg@10"], [ndcg_a, 0.0])
  mean = metrics.retrieval_metrics(metrics.rank_by_score(scores), labels,
                                   ["a", "b"])
  assert mean["mrr"] == pytest.approx((1 / 4 + 1 / 60) / 2)
  # A top-10 prefix: MRR of b is 0 (never retrieved), NDCG@10 unchanged.
  top10 = metrics.rank_by_score(scores, k=10)
  per10 = metrics.per_query_metrics(top10, labels, ["a", "b"])
  np.testing.assert_allclose(per10["mrr"], [1 / 4, 0])
  np.testing.assert_allclose(per10["ndcg@10"], per["ndcg@10"])


def test_perfect_ranking_scores_one():
  labels = np.array([[1, 0, 2, 2, 1, 0]])
  m = metrics.retrieval_metrics(np.array([[2, 3, 0, 4, 1, 5]]), labels, ["q"])
  assert m == {"ndcg@10": 1.0, "recall@1": 0.5, "recall@5": 1.0,
               "recall@10": 1.0, "recall@50": 1.0, "mrr": 1.0}


def test_query_without_label_two_is_rejected_by_name():
  labels = np.array([[0, 2, 1], [1, 1, 0]])
  with pytest.raises(ValueError, match="no label-2 product.*'pt00007'"):
    metrics.retrieval_metrics(np.array([[0, 1, 2]] * 2), labels,
                              ["pt00001", "pt00007"])


def test_bad_inputs_have_clear_errors():
  with pytest.raises(ValueError, match="NaN score for query row 0"):
    metrics.rank_by_score(np.array([[0.1, np.nan]]))
  with pytest.raises(ValueError, match="labels must be 0, 1 or 2"):
    metrics.retrieval_metrics(np.array([[0, 1]]), np.array([[2, 3]]), ["q"])
  with pytest.raises(ValueError, match="row 1: product 'p9' of query 'q'"):
    qrels_lib.labels_from_qrels([("q", "p1", 2), ("q", "p9", 1)], ["q"],
                              ["p1", "p2"], source="x.csv")


def test_labels_from_qrels_unlisted_pairs_are_zero():
  lab = qrels_lib.labels_from_qrels([("q2", "c", 2), ("q1", "a", 1)],
                                  ["q1", "q2"], ["a", "b", "c"])
  np.testing.assert_array_equal(lab, [[1, 0, 0], [0, 0, 2]])


@pytest.mark.parametrize("n,k", [(37, 5), (64, 64), (9, 7), (5, 5)])
def test_sharded_topk_equals_numpy_on_8_devices(n, k):
  assert jax.device_count() == 8
  rng = np.random.default_rng(n)
  # Small integers: every dot product is exact in fp32, and there are many
  # exact ties, so the tie rule is checked across shard boundaries too.
  products = rng.integers(-2, 3, size=(n, 6)).astype(np.float32)
  queries = rng.integers(-2, 3, size=(11, 6)).astype(np.float32)
  want_idx = metrics.rank_by_score(queries @ products.T, k=k)
  want_val = np.take_along_axis(queries @ products.T, want_idx, 1)
  for mesh in (knn.default_mesh(), jax.sharding.Mesh(
      np.asarray(jax.devices()[:1]), ("data",))):
    val, idx = knn.exact_topk(queries, products, k, mesh=mesh, query_batch=4)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(val, want_val)


def test_exact_topk_rejects_bad_k_and_shapes():
  with pytest.raises(ValueError, match="k=6 must be in"):
    knn.exact_topk(np.ones((2, 3)), np.ones((5, 3)), 6)
  with pytest.raises(ValueError, match=r"\(2, 4\).*\(5, 3\)"):
    knn.exact_topk(np.ones((2, 4)), np.ones((5, 3)), 2)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "flat"])
def test_faiss_ann_recall_against_exact(kind):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 32)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  q = x[:50] + 0.1 * rng.normal(size=(50, 32)).astype(np.float32)
  _, exact = knn.exact_topk(q, x, 10)
  index = index_lib.build_index(x, kind=kind, nprobe=16)
  _, approx = index_lib.ann_search(index, q, 10)
  recall = knn.ann_recall(approx, exact)
  if kind == "flat":
    assert recall == 1.0
  else:
    assert 0.8 <= recall <= 1.0
  assert knn.ann_recall(exact, exact) == 1.0
  assert knn.ann_recall(np.repeat(exact[:, :1], 10, 1), exact) == 0.1


def test_metrics_agree_with_trec_eval_on_random_rankings():
  """Our metrics (kept: the evaluation's tie rule and strict checks live
  beside them) against trec_eval's, through pytrec_eval.

  trec_eval's NDCG gain is the judged value itself, so labels go in as
  2^label - 1 (0, 1, 3): our graded gain. Recall@K and MRR count label 2
  only: relevance_level 3. Scores fall strictly with our rank, so trec_eval's
  own tie order never applies.
  """
  pytrec_eval = pytest.importorskip("pytrec_eval")
  rng = np.random.default_rng(0)
  q, n = 40, 60
  labels = rng.choice([0, 1, 2], size=(q, n), p=[0.8, 0.12, 0.08])
  labels[np.arange(q), rng.integers(0, n, q)] = 2  # Each query has a 2.
  ranking = np.stack([rng.permutation(n) for _ in range(q)])
  qids = [f"q{i}" for i in range(q)]
  ours = metrics.per_query_metrics(ranking, labels, qids)
  qrels = {qid: {f"d{j}": int(2 ** labels[i, j] - 1) for j in range(n)
                 if labels[i, j]} for i, qid in enumerate(qids)}
  run = {qid: {f"d{j}": float(n - r) for r, j in enumerate(ranking[i])}
         for i, qid in enumerate(qids)}
  graded = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
  binary = pytrec_eval.RelevanceEvaluator(
      qrels, {"recall.1,5,10,50", "recip_rank"}, relevance_level=3
  ).evaluate(run)
  for i, qid in enumerate(qids):
    assert ours["ndcg@10"][i] == pytest.approx(graded[qid]["ndcg_cut_10"])
    for k in metrics.RECALL_KS:
      assert ours[f"recall@{k}"][i] == pytest.approx(binary[qid][f"recall_{k}"])
    assert ours["mrr"][i] == pytest.approx(binary[qid]["recip_rank"])
