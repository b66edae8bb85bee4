"""One stage-1 and one stage-2 train step, OLD checkout vs NEW, bitwise.

A restructure must not change a single bit of what a step computes. This
runs the same step (one-layer "tiny" model, the tests' step configs, a fixed
synthetic batch) on the 4 test meshes in two subprocesses, one per checkout
(PYTHONPATH set to it, so each side uses its own init, sharding, jit helper
and step), saves (loss, metrics, new params) and compares them bit for bit.

  git worktree add /tmp/old31 19080d6
  python bench/step_identity.py --old=/tmp/old31 [--new=.] [--fast_compile]
      [--out=DIR]

Prints one row per (stage, mesh) and a last line "bit-identical: k/8".
Each side runs on 8 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

MESHES = {
    "8x1x1": [("data", 8), ("fsdp", 1), ("tensor", 1)],
    "1x8x1": [("data", 1), ("fsdp", 8), ("tensor", 1)],
    "2x4x1": [("data", 2), ("fsdp", 4), ("tensor", 1)],
    "2x2x2": [("data", 2), ("fsdp", 2), ("tensor", 2)],
}
B, L, LQ, N, R = 8, 8, 6, 2, 3


def _batches(image_size: int) -> tuple[dict, dict]:
  """Stage-1 and stage-2 batches of B rows (the tests' shapes)."""
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 2000, (B, L)).astype(np.int32)
  ids[:, 0] = 101
  lens = rng.integers(3, L + 1, B)
  mask = (np.arange(L)[None] < lens[:, None]).astype(np.int32)
  ids = ids * mask
  pid = np.array([0, 1, 2, 0, 3, 4, 5, 6], np.int32)
  image = rng.standard_normal((B, image_size, image_size, 3)).astype(
      np.float32)
  b1 = {"image": image, "ids": ids, "mask": mask, "product_id": pid}
  qids = rng.integers(1000, 2000, (B, LQ)).astype(np.int32)
  qids[:, 0] = 101
  rel = np.full((B, R), -1, np.int32)
  rel[1, 0] = 2
  rel[5, :2] = [0, 6]
  b2 = {"image": image, "title_ids": ids, "title_mask": mask,
        "product_id": pid, "query_ids": qids,
        "query_mask": np.ones((B, LQ), np.int32),
        "neg_query_ids": rng.integers(1000, 2000, (B, N, LQ)).astype(
            np.int32),
        "neg_query_mask": np.ones((B, N, LQ), np.int32),
        "neg_valid": rng.uniform(size=(B, N)) > 0.3,
        "relevant_product_ids": rel,
        "label": np.array([2, 1, 2, 2, 1, 2, 2, 1], np.int32)}
  return b1, b2


def worker(out_dir: str, fast_compile: bool) -> None:
  """One side: every (stage, mesh) step -> <out_dir>/<stage>_<mesh>.npz."""
  # pylint: disable=g-import-not-at-top
  # Imported here: the parent process must not start JAX, and the two
  # checkouts keep these modules at different paths.
  import dataclasses
  import jax
  from dashclip_jax import model as model_lib
  try:  # The layout after issue 31.
    from dashclip_jax.train import optim
    from dashclip_jax.train import sharding
    from dashclip_jax.train import state as train_state
    from dashclip_jax.train import steps as train_steps
    from dashclip_jax.train.step_config import StepConfig
    new_api = True
  except ImportError:  # The layout before it.
    from dashclip_jax import optim
    from dashclip_jax import sharding
    from dashclip_jax import train_state
    from dashclip_jax import train_steps
    StepConfig = train_steps.StepConfig  # pylint: disable=invalid-name
    new_api = False
  # pylint: enable=g-import-not-at-top
  import dashclip_jax  # pylint: disable=g-import-not-at-top
  print(f"  dashclip_jax from {os.path.dirname(dashclip_jax.__file__)}",
        flush=True)
  c = model_lib.model_config("tiny")
  cfg = c.replace(vision=dataclasses.replace(c.vision, depth=1),
                  text=dataclasses.replace(c.text, depth=1),
                  query=dataclasses.replace(c.query, depth=1))
  step_cfgs = {
      1: StepConfig(deterministic=True, momentum=0.995, queue_size=12,
                    alpha_ramp_steps=4),
      2: StepConfig(deterministic=True, train_product_tower=True,
                    label_policy="weighted", symmetric=True, hard_k=4)}
  opt = optim.OptimConfig(lr=1e-3, init_lr=5e-4, warmup_steps=2,
                          total_steps=10, clip_norm=1.0,
                          lr_mults=(("img/.*", 0.5), (".*", 1.0)))
  params = jax.device_get(model_lib.unbox(
      jax.jit(lambda r: model_lib.init_params(cfg, r))(jax.random.key(0))))
  tx = optim.make_optimizer(opt, params)
  batches = dict(zip((1, 2), _batches(cfg.vision.image_size)))
  for stage in (1, 2):
    make = (train_steps.make_stage1_step if stage == 1 else
            train_steps.make_stage2_step)
    for name, mesh_cfg in MESHES.items():
      path = os.path.join(out_dir, f"{stage}_{name}.npz")
      if os.path.isfile(path):  # Done by an earlier, interrupted run.
        continue
      mesh = sharding.make_mesh(mesh_cfg)
      sc = step_cfgs[stage]
      state = train_state.init_state(cfg, sc, tx, jax.random.key(0), mesh,
                                     params=params)
      batch = sharding.global_batch(batches[stage], mesh)
      step = make(cfg, sc, tx, mesh)
      if new_api:
        fn = train_state.jit_step(step, train_state.state_shardings(state),
                                  batch, mesh, fast_compile=fast_compile)
      else:
        fn = train_state.jit_step(
            step, state, batch, mesh, compiler_options=(
                {"xla_backend_optimization_level": 0} if fast_compile
                else None))
      state, metrics = fn(state, batch, jax.random.key(7))
      leaves = jax.tree_util.tree_flatten_with_path(
          jax.device_get(state.params))[0]
      out = {"param/" + jax.tree_util.keystr(p): np.asarray(x)
             for p, x in leaves}
      out.update({"metric/" + k: np.asarray(v) for k, v in
                  jax.device_get(metrics).items()})
      np.savez(path + ".tmp.npz", **out)
      os.replace(path + ".tmp.npz", path)
      print(f"stage {stage} {name}: loss {float(metrics['loss']):.9g}",
            flush=True)


def _start_side(checkout: str, out_dir: str, fast_compile: bool,
                log_path: str) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout),
             XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", out_dir]
  if fast_compile:
    cmd.append("--fast_compile")
  with open(log_path, "w") as log:
    return subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir(),
                            stdout=log, stderr=subprocess.STDOUT)


def _done(out_dir: str) -> bool:
  return all(os.path.isfile(os.path.join(out_dir, f"{stage}_{name}.npz"))
             for stage in (1, 2) for name in MESHES)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
  """Equal dtype, shape and bytes (NaN payloads included)."""
  return (a.dtype == b.dtype and a.shape == b.shape and
          a.tobytes() == b.tobytes())


def compare(old_dir: str, new_dir: str) -> int:
  """Prints the table; -> the number of bit-identical (stage, mesh) steps."""
  print(f"{'stage':<6}{'mesh':<8}{'loss OLD':>16}{'loss NEW':>16}"
        f"{'params':>12}{'metrics':>10}  bit-identical")
  same_steps = 0
  for stage in (1, 2):
    for name in MESHES:
      old = np.load(os.path.join(old_dir, f"{stage}_{name}.npz"))
      new = np.load(os.path.join(new_dir, f"{stage}_{name}.npz"))
      keys = sorted(set(old) | set(new))
      same = {k: k in old and k in new and same_bits(old[k], new[k])
              for k in keys}
      params = [k for k in keys if k.startswith("param/")]
      metrics = [k for k in keys if k.startswith("metric/")]
      ok = all(same.values())
      same_steps += ok
      print(f"{stage:<6}{name:<8}{float(old['metric/loss']):>16.9g}"
            f"{float(new['metric/loss']):>16.9g}"
            f"{sum(same[k] for k in params):>6}/{len(params):<5}"
            f"{sum(same[k] for k in metrics):>5}/{len(metrics):<4}  "
            f"{'yes' if ok else 'NO'}")
      for k in keys:
        if not same[k]:
          print(f"    differs: {k}")
  return same_steps


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--old", help="checkout of the code before (19080d6)")
  ap.add_argument("--new", default=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), help="checkout after (default: this one)")
  ap.add_argument("--fast_compile", action="store_true",
                  help="XLA opt level 0 on both sides (CI-scale compile)")
  ap.add_argument("--out", help="where each side's outputs go (default: a "
                  "new temporary directory); sides already there are reused")
  ap.add_argument("--worker", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker:
    worker(args.worker, args.fast_compile)
    return
  if not args.old:
    ap.error("--old is required (a checkout of the code before)")
  out = args.out or tempfile.mkdtemp(prefix="step_identity_")
  dirs = {side: os.path.join(out, side) for side in ("old", "new")}
  # The two sides run at once (XLA compiles on one core each); a side whose
  # outputs are already in --out is not run again.
  procs = {}
  for side, checkout in (("old", args.old), ("new", args.new)):
    os.makedirs(dirs[side], exist_ok=True)
    if _done(dirs[side]):
      print(f"== {side.upper()}: outputs already in {dirs[side]}")
      continue
    print(f"== {side.upper()}: {os.path.abspath(checkout)} "
          f"(log {dirs[side]}.log)", flush=True)
    procs[side] = _start_side(checkout, dirs[side], args.fast_compile,
                              dirs[side] + ".log")
  for side, proc in procs.items():
    if proc.wait():
      sys.exit(f"the {side.upper()} side failed: see {dirs[side]}.log")
  same = compare(dirs["old"], dirs["new"])
  print(f"bit-identical: {same}/{2 * len(MESHES)}")
  sys.exit(0 if same == 2 * len(MESHES) else 1)


if __name__ == "__main__":
  main()
