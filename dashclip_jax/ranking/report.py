"""The ranking job's outputs: metrics.json, report.md and roc.png."""

from __future__ import annotations

import json
import os

import matplotlib
matplotlib.use("Agg")  # Headless.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from sklearn import metrics as sk_metrics

from dashclip_jax.ranking import evaluate as evaluate_lib

SPLIT_TITLES = {"all": "all users", "history": "with purchase history",
                "no_history": "without purchase history"}


def _ci(v: list[float]) -> str:
  return f"[{v[0]:.4f}, {v[1]:.4f}]"


def _p(p: float) -> str:
  return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _delta_cell(d: dict | None) -> str:
  if not d:
    return "–"
  return f"{d['delta']:+.4f} {_ci(d['ci'])}, p={_p(d['p_value'])}"


def auc_table(results: dict, labels: dict[str, str]) -> list[str]:
  """Table-2-style: AUC (CI) and the delta against the baseline, per split."""
  splits = [s for s in evaluate_lib.SPLITS if results[s]["models"]]
  head = "| model | " + " | ".join(
      f"AUC, {SPLIT_TITLES[s]} | ΔAUC vs baseline, {SPLIT_TITLES[s]}"
      for s in splits) + " |"
  lines = [head, "|---" * (1 + 2 * len(splits)) + "|"]
  for name in results["all"]["models"]:
    cells = []
    for s in splits:
      m = results[s]["models"][name]
      cells += [f"{m['auc']:.4f} {_ci(m['auc_ci'])}",
                _delta_cell(m.get("delta_auc"))]
    lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
  return lines


def comparison_table(results: dict) -> list[str]:
  splits = [s for s in evaluate_lib.SPLITS if results[s].get("comparisons")]
  pairs = list(results["all"].get("comparisons", {}))
  if not pairs:
    return []
  lines = ["| comparison | " + " | ".join(SPLIT_TITLES[s] for s in splits)
           + " |", "|---" * (1 + len(splits)) + "|"]
  for pair in pairs:
    lines.append(f"| {pair} | " + " | ".join(
        _delta_cell(results[s]["comparisons"][pair]) for s in splits) + " |")
  return lines


def history_gain_table(results: dict, labels: dict[str, str]) -> list[str]:
  gains = results.get("history_gain") or {}
  if not gains:
    return []
  return ["| model | ΔAUC with history − ΔAUC without |", "|---|---|"] + [
      f"| {labels[name]} | {_delta_cell(d)} |" for name, d in gains.items()]


def log_loss_table(results: dict, labels: dict[str, str]) -> list[str]:
  splits = [s for s in evaluate_lib.SPLITS if results[s]["models"]]
  lines = ["| model | " + " | ".join(SPLIT_TITLES[s] for s in splits) + " |",
           "|---" * (1 + len(splits)) + "|"]
  for name in results["all"]["models"]:
    lines.append(f"| {labels[name]} | " + " | ".join(
        f"{results[s]['models'][name]['log_loss']:.4f} "
        f"{_ci(results[s]['models'][name]['log_loss_ci'])}"
        for s in splits) + " |")
  return lines


def roc_plot(y: np.ndarray, scores: dict[str, np.ndarray],
             masks: dict[str, np.ndarray], labels: dict[str, str],
             path: str) -> None:
  """ROC curves of every model, one panel per user split."""
  fig, axes = plt.subplots(1, len(masks), figsize=(5 * len(masks), 4.6))
  for ax, (split, mask) in zip(np.atleast_1d(axes), masks.items()):
    if len(np.unique(y[mask])) < 2:
      continue
    for name, prob in scores.items():
      fpr, tpr, _ = sk_metrics.roc_curve(y[mask], prob[mask])
      ax.plot(fpr, tpr, lw=1.2, label=f"{labels[name]} "
              f"({sk_metrics.roc_auc_score(y[mask], prob[mask]):.4f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(title=SPLIT_TITLES[split], xlabel="false positive rate",
           ylabel="true positive rate")
    ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(workdir: str, results: dict, labels: dict[str, str],
          setup: dict, notes: list[str]) -> str:
  """metrics.json and report.md in `workdir` -> report.md's path."""
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump({"results": results, "setup": setup}, f, indent=2,
              default=str)
  size = lambda s: results[s]["size"]
  lines = ["# Downstream ranking: DCN-V2 click models on simulated sessions",
           "", *[f"- {n}" for n in notes], "",
           f"## AUC on the next week ({setup['report']['level']:.0%} "
           f"bootstrap CIs over users, {setup['report']['bootstrap']} "
           "resamples; p: paired bootstrap against the baseline)", "",
           *auc_table(results, labels), ""]
  comp = comparison_table(results)
  if comp:
    lines += ["## The model under test against the other towers", "",
              *comp, ""]
  gain = history_gain_table(results, labels)
  if gain:
    lines += ["## Is the gain larger with a purchase history?", "", *gain,
              ""]
  lines += ["## Log-loss on the next week", "",
            *log_loss_table(results, labels), "",
            "## Sizes", "", "| split | impressions | clicks | users |",
            "|---|---|---|---|"]
  lines += [f"| {SPLIT_TITLES[s]} | {size(s).get('impressions', 0)} | "
            f"{size(s).get('clicks', '–')} | {size(s).get('users', '–')} |"
            for s in evaluate_lib.SPLITS]
  lines += ["", "## Training", "", "| model | steps | train loss | "
            "examples/s (step) | seconds |", "|---|---|---|---|---|"]
  for name, t in setup["training"].items():
    lines.append(f"| {labels[name]} | {t['steps']} | {t['loss']:.4f} | "
                 f"{t['examples_per_s']:.0f} | {t['seconds']:.1f} |")
  lines += ["", "![ROC](roc.png)", ""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
