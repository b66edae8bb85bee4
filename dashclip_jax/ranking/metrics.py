"""AUC and log-loss, with a bootstrap over users and a paired test.

Point estimates are sklearn's (`roc_auc_score`, `log_loss`). The bootstrap
resamples users with replacement (impressions of one user are not
independent: a cluster bootstrap); a resample weights each impression by
its user's count, and its AUC is the weighted Mann-Whitney statistic
(equal to sklearn's AUC with those sample weights; tested), computed for
all resamples from one table of pair counts by user.

The paired test of model A against model B reuses the same resamples for
both: the replicates of AUC_A - AUC_B give the CI of the delta and a
two-sided bootstrap p-value for H0 "delta = 0",
  p = min(1, 2 min((1 + #{delta* <= 0}) / (B + 1),
                   (1 + #{delta* >= 0}) / (B + 1))),
so with B resamples the smallest p reported is 2 / (B + 1).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn import metrics as sk_metrics


def auc(y: np.ndarray, score: np.ndarray,
        weight: np.ndarray | None = None) -> float:
  """Area under the ROC curve (sklearn)."""
  return float(sk_metrics.roc_auc_score(y, score, sample_weight=weight))


def log_loss(y: np.ndarray, prob: np.ndarray,
             weight: np.ndarray | None = None) -> float:
  return float(sk_metrics.log_loss(y, np.clip(prob, 1e-7, 1 - 1e-7),
                                   sample_weight=weight, labels=[0, 1]))


def user_resamples(num_users: int, num_resamples: int, seed: int
                   ) -> np.ndarray:
  """int32 (B, U): how often each user is drawn in each bootstrap resample."""
  rng = np.random.default_rng(seed)
  return rng.multinomial(num_users, np.full(num_users, 1.0 / num_users),
                         size=num_resamples).astype(np.int32)


def _sorted_aucs(pos: np.ndarray, starts: np.ndarray, w: np.ndarray
                 ) -> np.ndarray:
  """AUCs of weight rows `w` (R, M) over rows sorted by score; `pos` (M,)
  the sorted labels, `starts` the first row of each group of equal
  scores."""
  total = np.add.reduceat(w, starts, axis=1, dtype=np.float64)
  wn = np.add.reduceat(w * ~pos, starts, axis=1, dtype=np.float64)
  wp = total - wn
  below = np.cumsum(wn, axis=1) - wn  # Negative weight strictly below.
  num = (wp * (below + 0.5 * wn)).sum(axis=1)
  den = wp.sum(axis=1) * wn.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / den, np.nan)


def _sort(y: np.ndarray, score: np.ndarray):
  order = np.argsort(score, kind="stable")
  s = np.asarray(score)[order]
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # Tie groups.
  return order, np.asarray(y)[order] > 0, starts


def weighted_aucs(y: np.ndarray, score: np.ndarray, weights: np.ndarray
                  ) -> np.ndarray:
  """AUC of (y, score) under each row of `weights` (R, M) -> (R,).

  Ties count one half. A row without a weighted positive or negative gives
  NaN.
  """
  order, pos, starts = _sort(y, score)
  return _sorted_aucs(pos, starts, np.asarray(weights)[:, order])


def user_pair_counts(y: np.ndarray, score: np.ndarray, user: np.ndarray,
                     num_users: int, block: int = 2048
                     ) -> tuple[np.ndarray, ...]:
  """The AUC's pair counts by user: M (U, U) float64, M[u, v] = the sum over
  positives i of u and negatives j of v of [s_j < s_i] + [s_j = s_i] / 2;
  and positives P (U,), negatives N (U,) per user.

  Over the positives in score order, a running count per user of the
  negatives below: negative j adds 1/2 at the first positive scoring >= s_j
  and 1/2 at the first scoring > s_j. Row i of that count is F(s_i); M sums
  the rows by the positives' users, a block of positives at a time.
  """
  pos = np.asarray(y) > 0
  order = np.argsort(score[pos], kind="stable")
  pos_score, pos_user = score[pos][order], user[pos][order]
  neg_score, neg_user = score[~pos], user[~pos]
  enters = [np.searchsorted(pos_score, neg_score, side)
            for side in ("left", "right")]
  pairs = np.zeros((num_users, num_users))
  running = np.zeros(num_users, np.float32)
  for start in range(0, len(pos_score), block):
    stop = min(start + block, len(pos_score))
    steps = np.zeros((stop - start, num_users), np.float32)  # Exact: k/2.
    for at in enters:
      now = (at >= start) & (at < stop)
      np.add.at(steps, (at[now] - start, neg_user[now]), 0.5)
    below = running + np.cumsum(steps, axis=0)
    running = below[-1]
    by_user = sparse.csr_matrix(
        (np.ones(stop - start), (pos_user[start:stop], np.arange(
            stop - start))), shape=(num_users, stop - start))
    pairs += by_user @ below
  return (pairs, np.bincount(pos_user, minlength=num_users),
          np.bincount(neg_user, minlength=num_users))


def bootstrap_aucs(y: np.ndarray, score: np.ndarray, user: np.ndarray,
                   resamples: np.ndarray, max_pair_users: int = 8000,
                   chunk: int = 32) -> np.ndarray:
  """(B,) AUC replicates: impression weights = their user's count.

  With c the resample's user counts, AUC = c^T M c / ((c . P)(c . N))
  (`user_pair_counts`): one pass over the rows, then a matrix product per
  resample. Above `max_pair_users` users (M would not fit) each resample
  weighs the sorted rows instead (`weighted_aucs`), in chunks.
  """
  num_users = resamples.shape[1]
  if num_users <= max_pair_users:
    pairs, pos, neg = user_pair_counts(y, score, user, num_users)
    c = resamples.astype(np.float64)
    num = ((c @ pairs) * c).sum(axis=1)
    den = (c @ pos) * (c @ neg)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(den > 0, num / den, np.nan)
  order, pos, starts = _sort(y, score)
  sorted_user = np.asarray(user)[order]
  return np.concatenate([
      _sorted_aucs(pos, starts, resamples[i:i + chunk][:, sorted_user])
      for i in range(0, len(resamples), chunk)])


def bootstrap_log_losses(y: np.ndarray, prob: np.ndarray, user: np.ndarray,
                         resamples: np.ndarray) -> np.ndarray:
  """(B,) weighted log-loss replicates."""
  p = np.clip(prob, 1e-7, 1 - 1e-7)
  nll = -(y * np.log(p) + (1 - y) * np.log1p(-p))
  per_user = np.bincount(user, nll, minlength=resamples.shape[1])
  rows = np.bincount(user, minlength=resamples.shape[1])
  return (resamples @ per_user) / np.maximum(resamples @ rows, 1)


def interval(replicates: np.ndarray, level: float = 0.95
             ) -> tuple[float, float]:
  """Percentile interval of the finite replicates."""
  r = replicates[np.isfinite(replicates)]
  alpha = (1.0 - level) / 2
  lo, hi = np.quantile(r, [alpha, 1.0 - alpha])
  return float(lo), float(hi)


def paired_p_value(delta_replicates: np.ndarray) -> float:
  """Two-sided bootstrap p-value of H0 "delta = 0" (module docstring)."""
  d = delta_replicates[np.isfinite(delta_replicates)]
  b = len(d)
  low = (1 + np.sum(d <= 0)) / (b + 1)
  high = (1 + np.sum(d >= 0)) / (b + 1)
  return float(min(1.0, 2 * min(low, high)))
