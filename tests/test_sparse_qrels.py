"""SparseQrels and the metrics on sparse labels vs the dense formulas."""

import math

import numpy as np
import pytest

from dashclip_jax.evaluation import metrics

from dashclip_jax.evaluation import qrels as qrels_lib

L2 = math.log2


def dense_reference(ranking, labels):
  """The dense-only per_query_metrics this module had before SparseQrels
  (kept verbatim as the reference)."""
  ranked = np.take_along_axis(labels, ranking, axis=1)
  rel = ranked == 2
  n_rel = (labels == 2).sum(axis=1)
  out = {}
  gains = 2.0 ** ranked[:, :10] - 1.0
  discounts = 1.0 / np.log2(np.arange(2, 12))
  dcg = (gains * discounts[:gains.shape[1]]).sum(axis=1)
  ideal = -np.sort(-labels, axis=1)[:, :10]
  idcg = ((2.0 ** ideal - 1.0) * discounts[:ideal.shape[1]]).sum(axis=1)
  out["ndcg@10"] = dcg / idcg
  for k in (1, 5, 10, 50):
    out[f"recall@{k}"] = rel[:, :k].sum(axis=1) / n_rel
  first = np.argmax(rel, axis=1)
  out["mrr"] = np.where(rel.any(axis=1), 1.0 / (first + 1), 0.0)
  return out


def random_case(seed):
  """-> (dense int8 (Q, N) labels, judged pairs incl. label 0, shuffled and
  with repeats, as (query, product, label))."""
  rng = np.random.default_rng(seed)
  q, n = rng.integers(1, 12), rng.integers(3, 80)
  labels = rng.choice([0, 1, 2], size=(q, n), p=[0.75, 0.15, 0.1])
  labels[np.arange(q), rng.integers(0, n, q)] = 2  # Each query has a 2.
  judged = (labels > 0) | (rng.random((q, n)) < 0.2)  # Some judged 0s.
  qq, pp = np.nonzero(judged)
  dup = rng.random(qq.size) < 0.1  # Same pair, same label, twice.
  qq, pp = np.concatenate([qq, qq[dup]]), np.concatenate([pp, pp[dup]])
  order = rng.permutation(qq.size)
  qq, pp = qq[order], pp[order]
  return labels.astype(np.int8), (qq, pp, labels[qq, pp])


@pytest.mark.parametrize("seed", range(6))
def test_sparse_metrics_equal_the_dense_formula(seed):
  labels, (qq, pp, ll) = random_case(seed)
  q, n = labels.shape
  sparse = qrels_lib.SparseQrels.from_pairs(qq, pp, ll, q, n)
  np.testing.assert_array_equal(sparse.to_dense(), labels)
  rng = np.random.default_rng(100 + seed)
  # Integer scores: many ties, which rank_by_score gives to the lower index.
  scores = rng.integers(0, 4, size=(q, n)).astype(float)
  qids = [f"q{i}" for i in range(q)]
  for k in sorted({1, 3, n // 2 or 1, n}):
    ranking = metrics.rank_by_score(scores, k=k)
    want = dense_reference(ranking, labels)
    for got in (metrics.per_query_metrics(ranking, sparse, qids),
                metrics.per_query_metrics(ranking, labels, qids)):
      assert got.keys() == want.keys()
      for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12,
                                   err_msg=f"{key} at K={k}")
    for hk in (1, 2, 5):
      want_hit = (np.take_along_axis(labels, ranking[:, :hk], 1) == 2
                  ).any(axis=1).mean()
      assert metrics.hit_rate(ranking, sparse, qids, k=hk) == want_hit
      assert metrics.hit_rate(ranking, labels, qids, k=hk) == want_hit
    mean = metrics.retrieval_metrics(ranking, sparse, qids)
    assert mean == pytest.approx({k2: v.mean() for k2, v in want.items()},
                                 abs=1e-12)


def test_hand_computed_sparse_case():
  # Query a judges products 5 (2), 1 (1), 7 (0); query b judges 0 (2), 3 (2).
  qrels = qrels_lib.SparseQrels.from_pairs([0, 1, 0, 0, 1], [5, 3, 1, 7, 0],
                                         [2, 2, 1, 0, 2], 2, 8)
  np.testing.assert_array_equal(qrels.indptr, [0, 3, 5])
  np.testing.assert_array_equal(qrels.product, [1, 5, 7, 0, 3])
  np.testing.assert_array_equal(qrels.label, [1, 2, 0, 2, 2])
  ranking = np.array([[7, 1, 5], [2, 3, 4]])  # K = 3 < N = 8.
  np.testing.assert_array_equal(qrels.lookup(ranking), [[0, 1, 2], [0, 2, 0]])
  np.testing.assert_array_equal(qrels.judged(ranking),
                                [[True, True, True], [False, True, False]])
  per = metrics.per_query_metrics(ranking, qrels, ["a", "b"])
  idcg_a = 3 / L2(2) + 1 / L2(3)
  idcg_b = 3 / L2(2) + 3 / L2(3)
  np.testing.assert_allclose(per["ndcg@10"], [(1 / L2(3) + 3 / L2(4)) / idcg_a,
                                              (3 / L2(3)) / idcg_b])
  np.testing.assert_allclose(per["recall@1"], [0, 0])
  np.testing.assert_allclose(per["recall@5"], [1, 0.5])
  np.testing.assert_allclose(per["mrr"], [1 / 3, 1 / 2])
  assert metrics.hit_rate(ranking, qrels, ["a", "b"], k=2) == 0.5


def test_take_queries_and_products_match_dense_slicing():
  labels, (qq, pp, ll) = random_case(7)
  q, n = labels.shape
  qrels = qrels_lib.SparseQrels.from_pairs(qq, pp, ll, q, n)
  rows = np.array([q - 1, 0, q - 1])
  np.testing.assert_array_equal(qrels.take_queries(rows).to_dense(),
                                labels[rows])
  mask = np.arange(q) % 2 == 0
  np.testing.assert_array_equal(qrels.take_queries(mask).to_dense(),
                                labels[mask])
  keep = np.random.default_rng(0).random(n) < 0.5
  sub = qrels.take_products(keep)
  assert sub.num_products == keep.sum()
  np.testing.assert_array_equal(sub.to_dense(), labels[:, keep])
  # Judged label-0 pairs survive; the CSR rows stay ascending.
  assert sub.label.size == (keep[qrels.product]).sum()
  for r in range(sub.num_queries):
    row = sub.product[sub.indptr[r]:sub.indptr[r + 1]]
    assert (np.diff(row) > 0).all()
  np.testing.assert_array_equal(sub.has_relevant(), (labels[:, keep] == 2)
                                .any(axis=1))


def test_from_dense_and_relevance():
  labels = np.array([[0, 2, 1], [0, 0, 0], [2, 0, 0]])
  qrels = qrels_lib.SparseQrels.from_dense(labels)
  assert qrels.num_queries == 3 and qrels.num_products == 3
  np.testing.assert_array_equal(qrels.to_dense(), labels)
  np.testing.assert_array_equal(qrels.has_relevant(), [True, False, True])

  class Rel:  # The fields of data.relevance.Relevance that are read.
    name = "rel.csv"
    query, product, label = np.array([1, 0]), np.array([2, 0]), np.array([2, 0])
    num_queries, num_products = 2, 4
  sparse = qrels_lib.qrels_from_relevance(Rel)
  np.testing.assert_array_equal(sparse.to_dense(),
                                qrels_lib.labels_from_relevance(Rel))
  assert sparse.label.size == 2  # The judged 0 is kept.


def test_sparse_errors_name_the_culprit():
  make = qrels_lib.SparseQrels.from_pairs
  with pytest.raises(ValueError, match=r"x.csv pair 2: query 0 product 1 "
                     r"labelled 1 after 2 \(pair 0\)"):
    make([0, 0, 0], [1, 2, 1], [2, 0, 1], 1, 3, source="x.csv")
  with pytest.raises(ValueError, match=r"pair 1: product index 3 outside "
                     r"\[0, 3\)"):
    make([0, 0], [1, 3], [2, 0], 1, 3)
  with pytest.raises(ValueError, match=r"pair 0: query index -1"):
    make([-1], [1], [2], 1, 3)
  with pytest.raises(ValueError, match=r"pair 1: label 3 not in"):
    make([0, 0], [1, 2], [2, 3], 1, 3)
  with pytest.raises(ValueError, match="labels must be 0, 1 or 2"):
    qrels_lib.SparseQrels.from_dense(np.array([[2, 258]]))
  qrels = make([0, 1], [0, 1], [2, 1], 2, 3)
  with pytest.raises(ValueError, match="no label-2 product.*'b'"):
    metrics.retrieval_metrics(np.array([[0], [1]]), qrels, ["a", "b"])
  with pytest.raises(ValueError, match="outside"):
    metrics.retrieval_metrics(np.array([[0], [3]]), qrels.take_queries([0, 0]),
                              ["a", "b"])
  with pytest.raises(ValueError, match="ranking shape"):
    metrics.hit_rate(np.array([[0]]), qrels.take_queries([0, 0]), ["a", "b"])
  with pytest.raises(ValueError, match="1 query ids for 2"):
    metrics.check_labels(qrels, ["a"])


def test_truncated_metrics_name_cutoffs_past_the_depth():
  assert metrics.truncated_metrics(100, 100) == []
  assert metrics.truncated_metrics(200, 100) == []
  assert metrics.truncated_metrics(10, 1000) == ["recall@50", "mrr"]
  assert metrics.truncated_metrics(50, 1000) == ["mrr"]
  assert metrics.truncated_metrics(5, 1000) == [
      "ndcg@10", "recall@10", "recall@50", "mrr"]


@pytest.mark.parametrize("seed", range(4))
def test_judged_positions_are_those_of_the_dense_ranking(seed):
  """The held-out eval's ranking: judged pairs scored, the rest -inf."""
  labels, (qq, pp, ll) = random_case(seed)
  q, n = labels.shape
  qrels = qrels_lib.SparseQrels.from_pairs(qq, pp, ll, q, n)
  rng = np.random.default_rng(seed)
  dense = rng.integers(-2, 3, size=(q, n)).astype(float)  # Ties.
  dense[rng.random((q, n)) < 0.1] = np.nan
  dense[rng.random((q, n)) < 0.05] = -np.inf
  judged = np.zeros((q, n), bool)
  judged[qq, pp] = True
  want_scores = np.where(judged & ~np.isnan(dense), dense, -np.inf)
  ranking = metrics.rank_by_score(want_scores)
  where = np.argsort(ranking, axis=1)  # where[q, p]: rank of p for q.
  pair_scores = dense[qrels.query_of_pair(), qrels.product]
  position = metrics.judged_positions(qrels, pair_scores)
  np.testing.assert_array_equal(
      position, where[qrels.query_of_pair(), qrels.product])
  qids = [f"q{i}" for i in range(q)]
  want = dense_reference(ranking, labels)
  got = metrics.metrics_at_positions(qrels, position, qids)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12,
                               err_msg=key)


def test_judged_positions_by_hand():
  # Query 0 judges products 1, 4, 6 of 8: 6 (0.9) and 1 (0.5) first, then
  # every other product at -inf by index, product 4 (NaN) among them after
  # the unjudged 0, 2, 3 -> rank 5. Query 1: products 2 and 5 tie, 2 first.
  qrels = qrels_lib.SparseQrels.from_pairs([0, 0, 0, 1, 1], [1, 4, 6, 2, 5],
                                         [2, 2, 0, 1, 2], 2, 8)
  position = metrics.judged_positions(qrels, [0.5, np.nan, 0.9, 0.3, 0.3])
  np.testing.assert_array_equal(position, [1, 5, 0, 0, 1])
  per = metrics.metrics_at_positions(qrels, position, ["a", "b"])
  np.testing.assert_allclose(per["mrr"], [1 / 2, 1 / 2])
  np.testing.assert_allclose(per["recall@1"], [0, 0])
  np.testing.assert_allclose(per["recall@5"], [0.5, 1])
  np.testing.assert_allclose(per["recall@10"], [1, 1])
  with pytest.raises(ValueError, match=r"\(2,\) scores for 5 judged pairs"):
    metrics.judged_positions(qrels, [0.1, 0.2])


def test_direct_construction_is_checked():
  with pytest.raises(ValueError, match=r"query row 1: labels must be 0, 1 or "
                     r"2, found \[258\]"):
    qrels_lib.SparseQrels(np.array([0, 1, 2]), [0, 1], [2, 258], 3)
  with pytest.raises(ValueError, match="inconsistent SparseQrels"):
    qrels_lib.SparseQrels(np.array([0, 3]), [0, 1], [2, 1], 3)
  with pytest.raises(ValueError, match="ascending within each row"):
    qrels_lib.SparseQrels(np.array([0, 2]), [1, 0], [2, 1], 3)
  with pytest.raises(ValueError, match=r"in \[0, 3\)"):
    qrels_lib.SparseQrels(np.array([0, 2]), [0, 3], [2, 1], 3)
