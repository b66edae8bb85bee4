"""AUC, log-loss, the bootstrap over users and the paired test, against
sklearn and hand-computed cases."""

import numpy as np
import pytest
from sklearn import metrics as sk

from dashclip_jax.ranking import evaluate
from dashclip_jax.ranking import features
from dashclip_jax.ranking import metrics


def test_auc_hand_case():
  # Positives at 0.8, 0.4; negatives at 0.4, 0.1, 0.9. Pairs (pos, neg):
  # 0.8 beats 0.4, 0.1 (2), loses to 0.9; 0.4 ties 0.4 (1/2), beats 0.1 (1).
  y = np.array([1, 1, 0, 0, 0])
  s = np.array([0.8, 0.4, 0.4, 0.1, 0.9])
  want = (2 + 0.5 + 1) / 6
  assert metrics.auc(y, s) == pytest.approx(want)
  assert metrics.weighted_aucs(y, s, np.ones((1, 5)))[0] == pytest.approx(
      want)
  # Weight 2 on the 0.9 negative: 0.8 loses twice -> (2 + 1.5) / (2 * 4).
  w = np.array([[1, 1, 1, 1, 2]])
  assert metrics.weighted_aucs(y, s, w)[0] == pytest.approx(3.5 / 8)


def test_weighted_aucs_equal_sklearn_with_sample_weights():
  rng = np.random.default_rng(0)
  y = rng.random(500) < 0.2
  s = np.round(rng.random(500) + 0.5 * y, 2)  # Rounded: many ties.
  w = rng.integers(0, 4, (6, 500))
  got = metrics.weighted_aucs(y, s, w)
  want = [sk.roc_auc_score(y, s, sample_weight=row) for row in w]
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_bootstrap_replicate_is_the_auc_of_the_resampled_users():
  rng = np.random.default_rng(1)
  user = rng.integers(0, 30, 400)
  y = (rng.random(400) < 0.3).astype(np.float32)
  s = np.round(rng.random(400) + 0.3 * y, 2)  # Ties across users.
  resamples = metrics.user_resamples(30, 5, seed=3)
  assert (resamples.sum(1) == 30).all()
  reps = metrics.bootstrap_aucs(y, s, user, resamples)  # By user pairs.
  np.testing.assert_allclose(  # By weighted rows, 2 resamples at a time.
      metrics.bootstrap_aucs(y, s, user, resamples, max_pair_users=0,
                             chunk=2), reps, rtol=1e-12)
  # Counts carried across blocks of positives equal one block.
  for a, b in zip(metrics.user_pair_counts(y, s, user, 30, block=7),
                  metrics.user_pair_counts(y, s, user, 30)):
    np.testing.assert_array_equal(a, b)
  lls = metrics.bootstrap_log_losses(y, np.clip(s, 0.01, 0.99), user,
                                     resamples)
  for b, counts in enumerate(resamples):
    # The resample written out: each drawn user's rows, once per draw.
    rows = np.concatenate([np.flatnonzero(user == u)
                           for u in np.repeat(np.arange(30), counts)])
    assert reps[b] == pytest.approx(sk.roc_auc_score(y[rows], s[rows]))
    assert lls[b] == pytest.approx(sk.log_loss(
        y[rows], np.clip(s[rows], 0.01, 0.99)))


def test_interval_and_paired_p_value_hand_cases():
  reps = np.arange(1, 101, dtype=float)  # 1..100.
  lo, hi = metrics.interval(reps, 0.9)
  assert (lo, hi) == pytest.approx(tuple(np.quantile(reps, [0.05, 0.95])))
  # All 99 replicates above 0: p = 2 (1 + 0) / 100.
  assert metrics.paired_p_value(np.linspace(0.1, 1, 99)) == pytest.approx(
      0.02)
  # Half below, half above: p = 1.
  assert metrics.paired_p_value(np.array([-1.0, 1.0] * 50)) == 1.0
  assert metrics.log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == (
      pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2))


def test_evaluate_splits_deltas_and_paired_ci():
  rng = np.random.default_rng(2)
  n, users = 3000, 200
  user = rng.integers(0, users, n).astype(np.int32)
  history = rng.random(users) < 0.6
  y = (rng.random(n) < 0.2).astype(np.float32)
  base = rng.random(n) + 0.5 * y
  better = base + 0.3 * y * history[user]  # Better only with history.
  rows = features.Rows(inputs={}, click=y, p_click=y, user=user,
                       has_history=history[user], vocab=())
  out = evaluate.evaluate(rows, {"baseline": base, "better": better},
                          "baseline", [("better", "baseline")], users,
                          num_resamples=200, level=0.95, seed=0)
  for split, mask in evaluate.split_masks(rows).items():
    m = out[split]["models"]
    assert m["better"]["auc"] == pytest.approx(
        sk.roc_auc_score(y[mask], better[mask]))
    assert m["baseline"]["log_loss"] == pytest.approx(
        sk.log_loss(y[mask], np.clip(base[mask], 1e-7, 1 - 1e-7)))
    lo, hi = m["better"]["auc_ci"]
    assert lo < m["better"]["auc"] < hi
  gain = out["history"]["models"]["better"]["delta_auc"]
  assert gain["ci"][0] > 0 and gain["p_value"] < 0.01
  assert out["no_history"]["models"]["better"]["delta_auc"]["delta"] == 0
  more = out["history_gain"]["better"]  # Paired: the same resamples.
  assert more["delta"] == pytest.approx(gain["delta"])
  assert more["ci"][0] > 0
  assert out["all"]["comparisons"]["better vs baseline"]["delta"] == (
      pytest.approx(out["all"]["models"]["better"]["delta_auc"]["delta"]))
