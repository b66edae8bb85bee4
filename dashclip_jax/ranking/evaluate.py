"""The next-week evaluation: AUC and log-loss per model and user split,
bootstrap CIs over users, deltas against the baseline and paired p-values.

Splits: every impression ("all"), impressions of users with a purchase in
the history window before the session ("history") and without one
("no_history"). One set of user resamples serves every model and split,
so every delta is paired.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dashclip_jax.ranking import features as features_lib
from dashclip_jax.ranking import metrics as metrics_lib

SPLITS = ("all", "history", "no_history")


def split_masks(rows: features_lib.Rows) -> dict[str, np.ndarray]:
  return {"all": np.ones(len(rows), bool), "history": rows.has_history,
          "no_history": ~rows.has_history}


def _delta(a: np.ndarray, b, point: float, level: float) -> dict:
  d = a - b
  lo, hi = metrics_lib.interval(d, level)
  return {"delta": point, "ci": [lo, hi],
          "p_value": metrics_lib.paired_p_value(d)}


def evaluate(rows: features_lib.Rows, scores: dict[str, np.ndarray],
             baseline: str, comparisons: Sequence[tuple[str, str]],
             num_users: int, num_resamples: int, level: float, seed: int
             ) -> dict:
  """-> {split: {"size", "models": {name: {...}}, "comparisons"},
  "history_gain": {name: {...}}}.

  Each model: auc, auc_ci, log_loss, log_loss_ci and (but the baseline)
  delta_auc {delta, ci, p_value} against `baseline`; each (a, b) of
  `comparisons`: the delta of a against b. history_gain: a model's delta
  with history minus its delta without, paired over the same resamples.
  """
  resamples = metrics_lib.user_resamples(num_users, num_resamples, seed)
  out, gains = {}, {}  # gains[split][model]: (delta replicates, delta).
  for split, mask in split_masks(rows).items():
    y, user = rows.click[mask], rows.user[mask]
    if len(np.unique(y)) < 2:
      out[split] = {"size": {"impressions": int(mask.sum())}, "models": {},
                    "note": "fewer than two classes: no AUC"}
      continue
    reps, models = {}, {}
    for name, prob in scores.items():
      p = prob[mask]
      reps[name] = metrics_lib.bootstrap_aucs(y, p, user, resamples)
      ll = metrics_lib.bootstrap_log_losses(y, p, user, resamples)
      models[name] = {"auc": metrics_lib.auc(y, p),
                      "auc_ci": list(metrics_lib.interval(reps[name], level)),
                      "log_loss": metrics_lib.log_loss(y, p),
                      "log_loss_ci": list(metrics_lib.interval(ll, level))}
    gains[split] = {
        name: (reps[name] - reps[baseline],
               models[name]["auc"] - models[baseline]["auc"])
        for name in scores if name != baseline}
    for name, (d, point) in gains[split].items():
      models[name]["delta_auc"] = _delta(d, 0.0, point, level)
    out[split] = {
        "size": {"impressions": int(mask.sum()), "clicks": int(y.sum()),
                 "users": int(len(np.unique(user)))},
        "models": models,
        "comparisons": {f"{a} vs {b}": _delta(
            reps[a], reps[b], models[a]["auc"] - models[b]["auc"], level)
                        for a, b in comparisons}}
  if "history" in gains and "no_history" in gains:
    # Does a model gain more over the baseline for users with a history?
    out["history_gain"] = {
        name: _delta(d, gains["no_history"][name][0],
                     point - gains["no_history"][name][1], level)
        for name, (d, point) in gains["history"].items()}
  return out
