"""Train-step compile time with the layers unrolled vs scanned, one run.

  python bench/compile_time.py [--size base] [--dtype bfloat16] [--stages 1,2]
                               [--batch 8]

Lowers and compiles the stage-1/stage-2 steps (no run, no params in memory:
abstract state and batch) for `model.scan_layers` False and True, on the
default device. Compile time grows with the unrolled layer count (12 per
tower at base, and the text tower runs 3 times in stage 1), which a scan
compiles once. The last line is `scan_compile_speedup: <x>`, the geometric
mean over stages of unrolled / scanned seconds.

Measured (2026-11-27, the 2-core CPU dev machine, jax 0.10.2, base, bf16,
batch 8): stage 1 80.7 s unrolled, 55.1 s scanned; stage 2 45.8 s, 36.4 s;
scan_compile_speedup 1.36. (An earlier lone run took 113 s and 57 s for
stage 1.) At "small" (4 layers) it is 0.99: the rest of the step dominates.
Not yet run on a GPU, where the unrolled stage-1 step took 140 s.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))
import mfu  # noqa: E402  (the MFU bench's step setup and batches)

from dashclip_jax import model as model_lib  # noqa: E402
from dashclip_jax.train import state as train_state  # noqa: E402


def compile_seconds(cfg: model_lib.ModelConfig, stage: int, batch: int
                    ) -> tuple[float, float]:
  """(trace + lower, compile) seconds of one train step."""
  mesh, tx, sc, step = mfu.step_setup(stage, cfg)
  state = jax.eval_shape(lambda r: train_state.init_state(cfg, sc, tx, r, mesh),
                         jax.random.key(0))
  abstract_batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
      mfu.random_batch(stage, batch, cfg))
  t0 = time.perf_counter()
  lowered = train_state.jit_step(
      step, train_state.state_shardings(state), abstract_batch, mesh).lower(
      state, abstract_batch, jax.random.key(0))
  t1 = time.perf_counter()
  lowered.compile()
  return t1 - t0, time.perf_counter() - t1


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--size", default="base")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--stages", default="1,2")
  p.add_argument("--batch", type=int, default=8)
  args = p.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; "
        f"size={args.size} dtype={args.dtype} batch={args.batch}", flush=True)
  ratios = []
  for stage in [int(s) for s in args.stages.split(",")]:
    secs = {}
    for scan in (False, True):
      cfg = model_lib.model_config(args.size, dtype=args.dtype,
                                   scan_layers=scan)
      lower_s, compile_s = compile_seconds(cfg, stage, args.batch)
      secs[scan] = compile_s
      print(f"stage{stage} {'scanned' if scan else 'unrolled'}: trace+lower "
            f"{lower_s:.1f}s, compile {compile_s:.1f}s", flush=True)
    ratios.append(secs[False] / secs[True])
  print(f"scan_compile_speedup: "
        f"{math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")


if __name__ == "__main__":
  main()
