r"""Old code against new: are two main-job runs the same, bit for bit?

  python bench/compare_runs.py OLD_WORKDIR NEW_WORKDIR

For each stage both workdirs hold (`stage1`, `stage2`, or the workdir
itself when given a stage workdir), its newest trained model
(`model_dir.resolve_model_dir`) has its params compared array by array, bit
for bit (`step_identity.same_bits`); then every number of
`eval/metrics.json` both runs wrote. Prints one line per check and exits 1
if anything differs. Used for the issue-31 checks in docs/architecture.md
("What the move did not change").
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

from dashclip_jax.model import model_dir
from dashclip_jax.train import checkpoints
from step_identity import same_bits  # Run as `python bench/compare_runs.py`.


def params_equal(a_dir: str, b_dir: str) -> tuple[int, int, float]:
  """-> (bit-identical arrays, all arrays, largest absolute difference)."""
  _, a, _ = model_dir.load_model_dir(a_dir)
  _, b, _ = model_dir.load_model_dir(b_dir)
  fa = jax.tree_util.tree_flatten_with_path(a["params"])[0]
  fb = jax.tree_util.tree_flatten_with_path(b["params"])[0]
  if [p for p, _ in fa] != [p for p, _ in fb]:
    raise SystemExit(f"{a_dir} and {b_dir} hold different param trees")
  pairs = [(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(fa, fb)]
  same = sum(same_bits(x, y) for x, y in pairs)
  diff = max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
             for x, y in pairs)
  return same, len(pairs), diff


def main(old: str, new: str) -> int:
  ok = True
  stages = [s for s in ("stage1", "stage2") if os.path.isdir(
      os.path.join(old, s)) and os.path.isdir(os.path.join(new, s))] or [""]
  for stage in stages:
    try:
      a, b = (model_dir.resolve_model_dir(os.path.join(w, stage))
              for w in (old, new))
    except FileNotFoundError as e:
      print(f"{stage or 'models'}: {e}")
      ok = False
      continue
    if os.path.basename(a) != os.path.basename(b):
      print(f"{stage or 'models'}: newest models at different steps: {a}, {b}")
      ok = False
      continue
    same, n, diff = params_equal(a, b)
    ok &= same == n
    print(f"{stage or 'models'} step {os.path.basename(a)}: {same}/{n} param "
          f"arrays bit-identical (largest |diff| {diff:.3g})")
  metrics = [os.path.join(w, "eval", "metrics.json") for w in (old, new)]
  if all(os.path.isfile(m) for m in metrics):
    a, b = (checkpoints.flatten_config(json.load(open(m)))
            for m in metrics)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    ok &= not differ
    print(f"eval/metrics.json: {len(a.keys() & b.keys()) - len(differ)} of "
          f"{len(a.keys() | b.keys())} numbers equal"
          + (f"; differ: {', '.join(differ)}" if differ else ""))
  return 0 if ok else 1


if __name__ == "__main__":
  if len(sys.argv) != 3:
    raise SystemExit(__doc__)
  sys.exit(main(sys.argv[1], sys.argv[2]))
