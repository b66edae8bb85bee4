"""Probes and plots on synthetic embeddings with a known answer."""

import os

import numpy as np
import pytest
from PIL import Image

from dashclip_jax.evaluation import plots
from dashclip_jax.evaluation import probes
from dashclip_jax.evaluation import qrels as qrels_lib

_sparse = qrels_lib.SparseQrels.from_dense


def _clusters(n_per, k, dim, noise, seed):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, dim)) * 3
  y = np.repeat(np.arange(k), n_per)
  x = centres[y] + noise * rng.normal(size=(len(y), dim))
  return x.astype(np.float32), [f"cat{i}" for i in y]


def test_aisle_probe_separable_vs_random():
  x, y = _clusters(40, 4, 16, 0.3, 0)
  xt, yt = _clusters(10, 4, 16, 0.3, 0)  # Same centres (same seed).
  m = probes.aisle_probe(x, y, xt, yt)
  assert m == {"aisle_acc": 1.0, "aisle_f1": 1.0}
  # Labels that carry no information: near chance (0.25), far from 1.
  rng = np.random.default_rng(1)
  shuffled = list(rng.permutation(y))
  m = probes.aisle_probe(x, shuffled, xt, yt)
  assert m["aisle_acc"] < 0.6


def test_aisle_probe_macro_f1_counts_unpredicted_test_class():
  x, y = _clusters(30, 3, 8, 0.2, 0)
  xt, yt = _clusters(5, 3, 8, 0.2, 0)
  # A test class the probe never saw (5 copies of cat0 points): F1 0 for it,
  # cat0 precision halves (F1 2/3), so macro-F1 = (2/3 + 1 + 1 + 0) / 4.
  xt = np.concatenate([xt, xt[:5]])
  yt = yt + ["unseen"] * 5
  m = probes.aisle_probe(x, y, xt, yt)
  assert m["aisle_acc"] == pytest.approx(0.75)
  assert m["aisle_f1"] == pytest.approx((2 / 3 + 2) / 4)


def test_pair_features_layout():
  q = np.array([[3.0, 4.0]])
  p = np.array([[4.0, 3.0]])
  np.testing.assert_allclose(probes.pair_features(q, p),
                             [[3, 4, 4, 3, 12, 12, 24 / 25]], rtol=1e-6)


def test_sample_pairs_keeps_all_positive_and_samples_zeros():
  labels = np.zeros((3, 50), int)
  labels[0, [1, 2]] = 2
  labels[1, 7] = 1
  labels[2, [0, 9]] = [2, 1]
  qi, pi, y = probes.sample_pairs(_sparse(labels), 5, seed=0)
  assert len(y) == 5 + 15
  np.testing.assert_array_equal(labels[qi, pi], y)
  assert (y == 0).sum() == 15 and len(set(zip(qi, pi))) == 20


def _dense_sample_pairs(labels, zeros_per_query, seed):
  """The reference: each query's zeros drawn from its dense label row."""
  rng = np.random.default_rng(seed)
  qi, pi = np.nonzero(labels > 0)
  zq, zp = [qi], [pi]
  for q in range(labels.shape[0]):
    zeros = np.flatnonzero(labels[q] == 0)
    pick = rng.choice(zeros, min(zeros_per_query, len(zeros)), replace=False)
    zq.append(np.full(len(pick), q))
    zp.append(pick)
  qi, pi = np.concatenate(zq), np.concatenate(zp)
  return qi, pi, labels[qi, pi]


@pytest.mark.parametrize("n", [40, 12000])  # 12000: numpy's Floyd draw.
def test_sample_pairs_draws_what_the_dense_rows_drew(n):
  rng = np.random.default_rng(3)
  labels = rng.choice(3, (6, n), p=[0.9, 0.05, 0.05])
  labels[4] = 0
  labels[4, :n - 3] = 1  # 3 zeros left for 5 draws: all 3.
  # Listed label-0 pairs are label-0 pairs too (drawable).
  qrels = qrels_lib.SparseQrels.from_pairs([0, 0], [5, 6], [0, 2], 6, n)
  qrels = qrels_lib.SparseQrels.from_pairs(
      *np.concatenate([np.nonzero(labels), [qrels.query_of_pair(),
                                            qrels.product]], axis=1),
      np.concatenate([labels[np.nonzero(labels)], qrels.label]), 6, n)
  labels[0, 5], labels[0, 6] = 0, 2
  want = _dense_sample_pairs(labels, 5, seed=7)
  got = probes.sample_pairs(qrels, 5, seed=7)
  for w, g in zip(want, got):
    np.testing.assert_array_equal(g, w)


def test_relevance_probe_learns_cosine_rule():
  # Labels are a function of the cosine: 2 above 0.6, 1 above 0.2, else 0.
  rng = np.random.default_rng(0)
  q = rng.normal(size=(80, 8))
  p = rng.normal(size=(60, 8))
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  p /= np.linalg.norm(p, axis=1, keepdims=True)
  cos = q @ p.T
  labels = np.where(cos > 0.6, 2, np.where(cos > 0.2, 1, 0))
  ids = [f"q{i}" for i in range(80)]
  m = probes.relevance_probe(q, p, _sparse(labels), ids, zeros_per_query=15)
  assert m["relevance_acc"] > 0.85 and m["relevance_f1"] > 0.8
  half = probes.query_halves(ids)
  assert 20 < half.sum() < 60  # Both halves populated.


def test_tsne_plot_keeps_clusters_apart(tmp_path):
  x, y = _clusters(30, 3, 32, 0.2, 0)
  path = os.path.join(tmp_path, "tsne.png")
  xy = plots.tsne_plot(x, y, path, top=2)
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size == (880, 770)
  # 1-NN in the 2-D map recovers the category of every point.
  d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(len(xy)) * 1e9
  assert (np.asarray(y)[d.argmin(1)] == np.asarray(y)).all()
  # Above max_points, a fixed sample of the products is mapped.
  xy = plots.tsne_plot(x, y, path, top=2, max_points=40)
  assert xy.shape == (40, 2)


def test_cosine_plot_returns_class_means(tmp_path):
  # Inner products [[0.1, 0.2, 0.4], [0.2, 0.4, 0.8]] of 1-D embeddings.
  q, p = np.array([[1.0], [2.0]]), np.array([[0.1], [0.2], [0.4]])
  qrels = qrels_lib.SparseQrels.from_pairs([0, 0, 1, 1], [0, 1, 2, 0],
                                         [1, 2, 2, 0], 2, 3)  # (1, 0) listed.
  path = os.path.join(tmp_path, "cos.png")
  means = plots.cosine_by_relevance_plot(q, p, qrels, path)
  assert means == pytest.approx({0: (0.4 + 0.2 + 0.4) / 3, 1: 0.1,
                                 2: (0.2 + 0.8) / 2}, abs=1e-12)
  with Image.open(path) as im:
    assert im.format == "PNG"
  with pytest.raises(ValueError, match=r"1 queries x 3 products vs qrels"):
    plots.cosine_by_relevance_plot(q[:1], p, qrels, path)


@pytest.mark.parametrize("max_pairs", [1 << 20, 50])
def test_cosine_plot_means_match_the_dense_scores(tmp_path, max_pairs):
  """Exact label means whether the unlisted pairs are all drawn or sampled."""
  rng = np.random.default_rng(0)
  q = rng.normal(size=(7, 5)).astype(np.float32)
  p = rng.normal(size=(30, 5)).astype(np.float32)
  labels = rng.choice(3, (7, 30), p=[0.8, 0.1, 0.1])
  scores = np.asarray(q, np.float64) @ np.asarray(p, np.float64).T
  means = plots.cosine_by_relevance_plot(
      q, p, _sparse(labels), os.path.join(tmp_path, "cos.png"),
      max_pairs=max_pairs)
  assert means == pytest.approx(
      {lab: scores[labels == lab].mean() for lab in (0, 1, 2)}, abs=1e-12)


def test_unjudged_pairs_all_when_small_else_a_fixed_sample():
  qrels = qrels_lib.SparseQrels.from_pairs([0, 1], [1, 0], [2, 0], 2, 3)
  qi, pi = plots.unjudged_pairs(qrels, 6)
  assert list(zip(qi, pi)) == [(0, 0), (0, 2), (1, 1), (1, 2)]
  qi, pi = plots.unjudged_pairs(qrels, 5, seed=1)
  again = plots.unjudged_pairs(qrels, 5, seed=1)
  np.testing.assert_array_equal(qi, again[0])
  assert len(qi) <= 5 and not {(0, 1), (1, 0)} & set(zip(qi, pi))
