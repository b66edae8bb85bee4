"""How far a teacher agrees with human labels, and the threshold it earns.

Cohen's kappa (unweighted and linear-weighted), the confusion matrix and
per-class precision/recall come from scikit-learn; the expected calibration
error and the threshold sweep are small enough to write here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as skm

from dashclip_jax.curation.labelers import interface as labeler_lib

LABELS = tuple(range(labeler_lib.NUM_LABELS))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               num_bins: int = 10) -> float:
  """ECE of the top-label confidence: sum over equal-width confidence bins
  of (bin share) * |accuracy - mean confidence| (Guo et al. 2017).

  A confidence of exactly 1 falls in the last bin, 0 in the first.
  """
  conf, hit = _confidence_and_hits(probs, labels)
  if not len(conf):
    return 0.0
  bins = np.minimum((conf * num_bins).astype(np.int64), num_bins - 1)
  ece = 0.0
  for b in range(num_bins):
    sel = bins == b
    if sel.any():
      ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
  return float(ece)


def reliability_bins(probs: np.ndarray, labels: np.ndarray,
                     num_bins: int = 10) -> list[dict]:
  """Per confidence bin: its range, count, mean confidence and accuracy."""
  conf, hit = _confidence_and_hits(probs, labels)
  bins = np.minimum((conf * num_bins).astype(np.int64), num_bins - 1)
  out = []
  for b in range(num_bins):
    sel = bins == b
    out.append({"lo": b / num_bins, "hi": (b + 1) / num_bins,
                "count": int(sel.sum()),
                "confidence": float(conf[sel].mean()) if sel.any() else None,
                "accuracy": float(hit[sel].mean()) if sel.any() else None})
  return out


def _confidence_and_hits(probs, labels):
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  if probs.ndim != 2 or len(probs) != len(labels):
    raise ValueError(f"probs {probs.shape} and labels {labels.shape} must "
                     "be (N, C) and (N,)")
  return probs.max(1), (probs.argmax(1) == labels).astype(np.float64)


def agreement(probs: np.ndarray, labels: np.ndarray,
              num_bins: int = 10) -> dict:
  """Teacher (argmax of `probs`) against human `labels` -> JSON-ready dict."""
  labels = np.asarray(labels, np.int64)
  pred = np.asarray(probs).argmax(1)
  precision, recall, f1, support = skm.precision_recall_fscore_support(
      labels, pred, labels=LABELS, zero_division=0)
  return {
      "pairs": int(len(labels)),
      "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
      "kappa": float(skm.cohen_kappa_score(labels, pred, labels=LABELS)),
      "kappa_linear": float(skm.cohen_kappa_score(
          labels, pred, labels=LABELS, weights="linear")),
      # Rows: human label, columns: teacher label.
      "confusion": skm.confusion_matrix(labels, pred,
                                        labels=LABELS).tolist(),
      "per_class": {str(c): {"precision": float(precision[c]),
                             "recall": float(recall[c]), "f1": float(f1[c]),
                             "support": int(support[c])} for c in LABELS},
      "ece": expected_calibration_error(probs, labels, num_bins),
      "reliability": reliability_bins(probs, labels, num_bins),
  }


def threshold_sweep(probs: np.ndarray, labels: np.ndarray,
                    thresholds: Sequence[float]) -> list[dict]:
  """Per threshold t: the share of pairs whose confidence is >= t
  (coverage) and the accuracy of those kept."""
  conf, hit = _confidence_and_hits(probs, labels)
  out = []
  for t in thresholds:
    keep = conf >= t
    out.append({"threshold": float(t), "coverage": float(keep.mean()),
                "accuracy": float(hit[keep].mean()) if keep.any() else None})
  return out


def choose_threshold(sweep: list[dict], target_accuracy: float
                     ) -> tuple[float, str]:
  """-> (threshold, why): the lowest threshold whose kept pairs reach
  `target_accuracy` (the most labels at that quality); if none does, the
  most accurate one."""
  ok = [s for s in sweep if s["accuracy"] is not None and
        s["accuracy"] >= target_accuracy]
  if ok:
    return (min(s["threshold"] for s in ok),
            f"lowest with accuracy >= {target_accuracy} on held-out seed "
            "queries")
  scored = [s for s in sweep if s["accuracy"] is not None]
  if not scored:
    return max(s["threshold"] for s in sweep), "no pair scored: the highest"
  best = max(scored, key=lambda s: (s["accuracy"], -s["threshold"]))
  return (best["threshold"], f"none reaches accuracy {target_accuracy} on "
          f"held-out seed queries: the most accurate ({best['accuracy']:.4f})")


def reliability_plot(bins: list[dict], path: str, title: str) -> None:
  """Accuracy against confidence per bin, with the diagonal, as a PNG."""
  # matplotlib: heavy to import, and only the report's plots use it.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
  width = bins[0]["hi"] - bins[0]["lo"]
  ax.bar(centres, [b["accuracy"] or 0.0 for b in bins], width=width * 0.9,
         edgecolor="black", label="accuracy")
  ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("confidence (top label probability)")
  ax.set_ylabel("accuracy")
  ax.set_title(title, fontsize=9)
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
