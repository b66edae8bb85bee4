r"""The label-scarce table (issue 30) from finished stage-2 workdirs.

  python bench/curation_table.py \
      "10% seed only=/tmp/r30/f10_seed_s0,/tmp/r30/f10_seed_s1" \
      "10% seed + teacher=/tmp/r30/f10_exp_s0,/tmp/r30/f10_exp_s1" ...

Each argument is `row name=workdir[,workdir...]`: one stage-2 run per
training seed (`--config.seed`), each made by

  python -m dashclip_jax.main --config=configs/stage2.py:fashion \
      --config.init.checkpoint=S1 --config.data.relevance_train_path=SET \
      --config.eval.paraphrases=True --config.seed=N --workdir=W

Per row: the test metrics of the run's final evaluation (qrels_test.csv,
<workdir>/eval/metrics.json, system "dashclip"), and the last periodic
evaluation's held-out TRAIN queries (eval/ndcg@10) and train paraphrase set
(para/ndcg@10, when the run logged it), or with WiSE-FT (wise_ft.json) the
chosen mix's. With several seeds a cell is the
mean ± half the range (the seed-to-seed spread).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

TEST = (("ndcg@10", "NDCG@10"), ("recall@10", "R@10"), ("mrr", "MRR"))
TRAIN_SIDE = (("eval/ndcg@10", "held-out NDCG@10"),
              ("para/ndcg@10", "paraphrase NDCG@10"))


def run_metrics(workdir: str) -> dict[str, float]:
  """One run's test and train-side figures (NaN where it has none)."""
  path = os.path.join(workdir, "eval", "metrics.json")
  if not os.path.isfile(path):
    raise SystemExit(f"{workdir}: no eval/metrics.json (not finished?)")
  with open(path) as f:
    test = json.load(f)["dashclip"]
  out = {key: float(test[key]) for key, _ in TEST}
  # A main job that ran stage 1 too keeps stage 2's log under stage2/.
  log_path = os.path.join(workdir, "stage2", "metrics.jsonl")
  if not os.path.isfile(log_path):
    log_path = os.path.join(workdir, "metrics.jsonl")
  with open(log_path) as f:
    evals = [r for r in map(json.loads, f) if "eval/ndcg@10" in r]
  last = evals[-1] if evals else {}
  wise = os.path.join(workdir, "wise_ft.json")
  if os.path.isfile(wise):  # The exported model is the chosen mix.
    with open(wise) as f:
      w = json.load(f)
    last = w["metrics"][str(w["alpha"])]
  for key, _ in TRAIN_SIDE:
    out[key] = float(last.get(key, np.nan))
  return out


def cell(values: list[float]) -> str:
  values = [v for v in values if not np.isnan(v)]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.4f}"
  mean, half = np.mean(values), (max(values) - min(values)) / 2
  return f"{mean:.4f} ± {half:.4f}"


def main(argv: list[str]) -> None:
  if not argv:
    raise SystemExit(__doc__)
  columns = [name for _, name in TEST + TRAIN_SIDE]
  print("| row | seeds | " + " | ".join(columns) + " |")
  print("|---|---|" + "---|" * len(columns))
  for arg in argv:
    name, sep, dirs = arg.partition("=")
    if not sep or not dirs:
      raise SystemExit(f"{arg!r}: expected 'row name=workdir[,workdir...]'")
    runs = [run_metrics(d) for d in dirs.split(",")]
    cells = [cell([r[key] for r in runs]) for key, _ in TEST + TRAIN_SIDE]
    print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main(sys.argv[1:])
