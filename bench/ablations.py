"""Stage-2 ablations on the fashion catalog, one row per choice.

  python bench/ablations.py --stage1=/tmp/f/stage1 --out=/tmp/ablations \
      [--steps=200] [--rows=default,proj_frozen,...]

Every row is the fashion main job's stage 2 (configs/stage2.py:fashion)
with the product tower body frozen (`FROZEN_BODY`, DashCLIP's choice and
this project's earlier default) started from the same stage-1 workdir
(`--stage1`, e.g. the `stage1/` of a fashion main-job run) with one change,
for `--steps` steps, then its test
evaluation (qrels_test.csv, all 1,185 test products per query) with the
`dashclip_text` system beside it: the same model with its product side fed
the title alone (ablation e). Rows run one after another (reruns resume
finished rows). Prints one markdown table: NDCG@10, R@1, R@10, MRR per row
and the command that reproduces it.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

FROZEN_BODY = ("--config.optim.lr_mults=(img|txt|vision_proj|text_proj|"
               "itm_head)/.*=0; .*=1")
ROWS = {
    # (a) the product side.
    "default": ("tower body frozen, product_proj trained", []),
    "proj_frozen": ("product_proj frozen too (identity from MiniLM)", [
        "--config.optim.lr_mults=(img|txt|vision_proj|text_proj|itm_head|"
        "product_proj)/.*=0; .*=1"]),
    "tower_trained": ("whole product tower trained (fashion's default)", [
        "--config.optim.lr_mults=(vision_proj|text_proj|itm_head)/.*=0; "
        ".*=1"]),
    # (b) label-1 pairs.
    "label1_positive": ("label1_policy=positive",
                        ["--config.data.label1_policy=positive"]),
    "label1_exclude": ("label1_policy=exclude",
                       ["--config.data.label1_policy=exclude"]),
    # (c) mined label-0 negatives.
    "negatives_0": ("no mined negatives (in-batch only)",
                    ["--config.data.num_negatives=0"]),
    "negatives_8": ("8 mined negatives", ["--config.data.num_negatives=8"]),
    # (d) stage 1: start from the MiniLM init itself (stage 1's models/0).
    # Against tower_trained: does stage 1 help when stage 2 trains the tower?
    "no_stage1": ("tower trained, no stage 1 (from the MiniLM init)", [
        "--config.optim.lr_mults=(vision_proj|text_proj|itm_head)/.*=0; "
        ".*=1"]),
}


def command(row: str, stage1: str, out: str, steps: int) -> list[str]:
  start = (os.path.join(stage1, "models", "0") if row == "no_stage1"
           else stage1)
  extra = ROWS[row][1]
  if not any(e.startswith("--config.optim.lr_mults=") for e in extra):
    extra = [FROZEN_BODY, *extra]
  return [sys.executable, "-m", "dashclip_jax.main",
          "--config=configs/stage2.py:fashion",
          f"--workdir={os.path.join(out, row)}",
          f"--config.init.checkpoint={start}",
          f"--config.train.total_steps={steps}",
          f"--config.train.eval_every={steps}",
          f"--config.checkpoint.every_steps={steps}",
          "--config.final_eval.baselines=('dashclip_text',)",
          "--config.final_eval.plots.enabled=false",
          "--config.final_eval.export.enabled=false",
          "--config.final_eval.probes.relevance=false", *extra]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--stage1", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--rows", default=",".join(ROWS))
  args = parser.parse_args()
  rows = [r.strip() for r in args.rows.split(",") if r.strip()]
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    sys.exit(f"ablations: unknown rows {unknown}; known: {list(ROWS)}")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  results = {}
  for row in rows:
    cmd = command(row, args.stage1, args.out, args.steps)
    metrics_file = os.path.join(args.out, row, "eval", "metrics.json")
    if not os.path.isfile(metrics_file):
      t0 = time.time()
      os.makedirs(os.path.join(args.out, row), exist_ok=True)
      with open(os.path.join(args.out, row, "log.txt"), "w") as log:
        proc = subprocess.run(cmd, cwd=repo, stdout=log,
                              stderr=subprocess.STDOUT, check=False)
      if proc.returncode:
        print(f"{row}: failed (exit {proc.returncode}), see "
              f"{os.path.join(args.out, row, 'log.txt')}", flush=True)
        continue
      print(f"{row}: done in {time.time() - t0:.0f} s", flush=True)
    with open(metrics_file) as f:
      results[row] = (json.load(f), cmd)

  print("\n| row | change | system | NDCG@10 | R@1 | R@10 | MRR | aisle |")
  print("|---|---|---|---|---|---|---|---|")
  for row, (m, _) in results.items():
    for system in ("dashclip", "dashclip_text"):
      s = m.get(system)
      if s is None:
        continue
      print(f"| {row} | {ROWS[row][0]} | {system} | {s['ndcg@10']:.4f} | "
            f"{s['recall@1']:.4f} | {s['recall@10']:.4f} | {s['mrr']:.4f} | "
            f"{s.get('aisle_acc', float('nan')):.3f} |")
  print("\ncommands:")
  for row, (_, cmd) in results.items():
    print(f"  {row}: " + " ".join(shlex.quote(c) for c in cmd[1:]))


if __name__ == "__main__":
  main()
