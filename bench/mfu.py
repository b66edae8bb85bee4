"""Model FLOPs utilisation of the stage-1 and stage-2 train steps on one GPU.

  python bench/mfu.py [--size base] [--dtype bfloat16] [--batch 128,256]
                      [--batch2 256] [--stages 1,2] [--steps 10]
                      [--remat] [--scan] [--profile] [--out DIR]
                      [--variants einsum,cudnn,cudnn+rbg] [--peak_tflops 989.4]

MFU = model FLOPs per step / step time / peak. Model FLOPs are counted
analytically (`dashclip_jax/train/flops.py`: matmuls and attention; forward x3
for trained towers, x1 for frozen ones), so rematerialisation or wasted
work never raises the figure. XLA's own count of the compiled step is
printed beside it (on GPU it misses the library matmuls: read it as a
lower bound). The peak defaults to the H100/H200 SXM dense bf16 datasheet
rate (989.4 TFLOP/s); a large bf16 matmul is timed in the same run so the
figure can also be read against what the card delivers. `--profile`
prints where the device time of a step goes, by model op (on GPU it reads
the trace's "XLA Ops" line when there is one); `--out` keeps the trace and
the compiled HLO for a closer look. `--variants` times the same step with
other attention implementations (model.ATTENTION_IMPLEMENTATIONS) and, with
"+rbg", dropout and sampling keys of the "rbg" PRNG (XLA's RngBitGenerator)
instead of threefry. The padded "cudnn" attention has not run on a GPU yet
(unpadded, cuDNN refused the ViT's 197 tokens in training).

Measured (2026-11-27, one H200, jax 0.11.2, base, bf16, batch 256, stage 1,
einsum attention, threefry dropout): 233.6 ms/step, 1096 examples/s, 55.0
model TFLOP/step, 235 TFLOP/s, MFU 23.8% (29% of the 803 TFLOP/s the card's
matmul gave); compile 140 s. (Before ITM's texts shared their image's
keys/values: 231 ms for 59.3 TFLOP, 25.9%: the 7% fewer FLOPs saved no time.)
Where those 232 ms of kernels went (--profile): matmuls 98 ms (cuBLAS 65,
Triton 35: mostly the attention einsums' small batched products),
reductions 43 (layer-norm and bias gradients; one multi-output text
layer-norm backward fusion alone 8 ms, on a batch-minor layout), transposes
36 (around the attention einsums), elementwise 30 (exact-erf GELU 9, dropout
selects 4, softmax exp 4.5), scatter 4.5 (word-embedding gradients). The
ViT's attention is about 35 ms of it, ITM's cross-attention about 20.

Steps are timed back to back after two warm-up steps (the state is donated,
so each step waits on the previous one, as in training). The last lines
are `mfu_stage<N>_<size>_<dtype>: <x>`, one per stage, for its last batch.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax.model import tokenizer as tok
from dashclip_jax.train import flops as model_flops
from dashclip_jax.train import optim
from dashclip_jax.train import sharding
from dashclip_jax.train import state as train_state
from dashclip_jax.train import step_config
from dashclip_jax.train import steps as ts

TITLE_LEN, QUERY_LEN, N_NEG = 32, 16, 3


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
  """Delivered bf16 matmul rate, on random data (zeros run faster)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: x @ y)
  for _ in range(3):
    f(a, b).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def random_batch(stage: int, b: int, cfg: model_lib.ModelConfig,
                 seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  s = cfg.vision.image_size

  def tokens(shape):
    ids = rng.integers(1000, 30000, shape).astype(np.int32)
    ids[..., 0] = tok.CLS_ID
    return ids, np.ones(shape, np.int32)

  image = rng.standard_normal((b, s, s, 3)).astype(np.float32)
  ids, mask = tokens((b, TITLE_LEN))
  pid = np.arange(b, dtype=np.int32)
  if stage == 1:
    return {"image": image, "ids": ids, "mask": mask, "product_id": pid}
  q_ids, q_mask = tokens((b, QUERY_LEN))
  n_ids, n_mask = tokens((b, N_NEG, QUERY_LEN))
  return {"image": image, "title_ids": ids, "title_mask": mask,
          "product_id": pid, "query_ids": q_ids, "query_mask": q_mask,
          "neg_query_ids": n_ids, "neg_query_mask": n_mask,
          "neg_valid": np.ones((b, N_NEG), bool),
          "label_weight": np.ones((b,), np.float32)}


def op_kind(kernel: str) -> str:
  """Coarse class of a device kernel or XLA op, from its name."""
  k = kernel.lower()
  if k.startswith(("nvjet", "gemm_fusion", "ynn_fusion", "dot")) or (
      "gemm" in k and "fusion" not in k):
    return "matmul"
  if any(s in k for s in ("cudnn", "fmha", "flash", "xmma", "convolution")):
    return "cudnn/conv"
  for kind in ("reduce", "transpose", "scatter", "copy"):
    if kind in k:
      return kind
  return "elementwise/other"


def op_times(events: list[dict], hlo_text: str
             ) -> tuple[collections.Counter, collections.Counter, str]:
  """Device time (us) per (kernel, model op) and per op_kind, summed over
  the trace, and which events were read.

  GPU: the "XLA Ops" line if there is one (streams repeat its kernels),
  else the GPU's streams; a kernel inside a CUDA graph carries the command
  buffer as its hlo_op, so it is named by the kernel (XLA names kernels
  after their fusion, '.' -> '_'). CPU: the executor's op events.
  """
  source = {}  # HLO instruction name ('.' -> '_') -> model op_name.
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]+)"', line)
    if m:
      source[m.group(1).replace(".", "_")] = m.group(2)
  names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") in ("process_name",
                                                       "thread_name")}
  device_pids = {pid for (pid, tid), n in names.items()
                 if tid is None and "GPU" in n}
  ops_lines = {key for key, n in names.items()
               if key[0] in device_pids and n == "XLA Ops"}
  host_prefixes = ("$", "Thunk", "Pjit", "CommonPjRt", "Slinky", "np.")

  def keep(e):
    if ops_lines:
      return (e["pid"], e.get("tid")) in ops_lines
    if device_pids:
      return e["pid"] in device_pids
    return not e["name"].startswith(host_prefixes)

  per_op, per_kind = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or not keep(e):
      continue
    args = e.get("args", {})
    hlo = args.get("hlo_op", e["name"])
    if hlo.startswith("command_buffer"):
      hlo = e["name"]
    hlo = hlo.replace(".", "_")
    where = source.get(hlo, args.get("long_name", ""))
    # Group repeated layers: drop layer/block indices from the op path.
    where = re.sub(r"(layer|block)_\d+", r"\1_*", where)
    kernel = re.sub(r"_\d+$", "", hlo)
    per_op[(kernel, where.replace("jit(step)/", "")[-90:])] += e.get("dur", 0)
    per_kind[op_kind(kernel)] += e.get("dur", 0)
  read = ("XLA Ops line" if ops_lines else
          "GPU streams" if device_pids else "host op events")
  return per_op, per_kind, read


def format_op_times(per_op, per_kind, read: str, steps: int,
                    top: int = 25) -> str:
  total = sum(per_op.values())
  ms = lambda us: us / steps / 1e3
  lines = [f"  profile: {ms(total):.1f} ms of op time per step ({read})"]
  lines.append("  by kind: " + ", ".join(
      f"{kind} {ms(us):.1f} ms ({100 * us / total:.0f}%)"
      for kind, us in per_kind.most_common()))
  for (kernel, where), us in per_op.most_common(top):
    lines.append(f"  {ms(us):7.2f} ms {100 * us / total:5.1f}%  "
                 f"{kernel[:40]:40s} {where}")
  return "\n".join(lines)


def read_trace(path: str) -> list[dict]:
  with gzip.open(path) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile_summary(run_step, compiled, keep_as: str | None = None,
                    steps: int = 3) -> str:
  """Device time per kernel over `steps` traced steps, biggest first, each
  named by the model code it came from (the compiled HLO's metadata).
  `keep_as`: also copy the trace and the HLO text to <keep_as>.*.gz (read
  them again with --read)."""
  trace_dir = tempfile.mkdtemp()
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  for _ in range(steps):
    run_step()
  jax.profiler.stop_trace()
  path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"),
                   recursive=True)[0]
  hlo_text = compiled.as_text()
  if keep_as:
    shutil.copy(path, keep_as + ".trace.json.gz")
    with gzip.open(keep_as + ".hlo.txt.gz", "wt") as f:
      f.write(hlo_text)
  return format_op_times(*op_times(read_trace(path), hlo_text), steps)


# Freeze rules: configs/stage1.py's; stage 2 with the whole product tower
# (and the stage-1 heads) frozen, as configs/stage2.py:tiny/base freeze it
# but for product_proj.
STAGE1_FROZEN = ((r"(query|query_proj|product_proj)/.*", 0.0), (".*", 1.0))
STAGE2_FROZEN = (
    (r"(img|txt|product_proj|vision_proj|text_proj|itm_head)/.*", 0.0),
    (".*", 1.0))


def step_setup(stage: int, cfg: model_lib.ModelConfig):
  """-> (1-device mesh, optimizer, StepConfig, unjitted step) of a stage.

  Not trainers.step_options.make_state: that pulls in ml_collections and
  absl (config_lib), which the GPU image lacks; this needs jax/flax/optax.
  """
  mesh = sharding.make_mesh([("data", 1)], jax.devices()[:1])
  lr_mults = STAGE1_FROZEN if stage == 1 else STAGE2_FROZEN
  tx = optim.make_optimizer(optim.OptimConfig(
      lr=1e-5, warmup_steps=10, total_steps=1000, lr_mults=lr_mults),
      model_lib.abstract_params(cfg))
  sc = step_config.StepConfig()
  make = ts.make_stage1_step if stage == 1 else ts.make_stage2_step
  return mesh, tx, sc, make(cfg, sc, tx, mesh)


def time_step(stage: int, cfg: model_lib.ModelConfig, b: int, steps: int,
              profile: bool = False, key_impl: str | None = None,
              keep_as: str | None = None) -> dict[str, float]:
  mesh, tx, sc, step = step_setup(stage, cfg)
  state = train_state.init_state(cfg, sc, tx, jax.random.key(0), mesh)
  batch = sharding.global_batch(random_batch(stage, b, cfg), mesh)
  key = lambda i: jax.random.key(i, impl=key_impl)
  t0 = time.perf_counter()
  compiled = train_state.jit_step(
      step, train_state.state_shardings(state), batch, mesh).lower(
      state, batch, key(0)).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  if isinstance(cost, list):  # Older jax returns one dict per computation.
    cost = cost[0]
  xla_flops = float(cost.get("flops", float("nan")))
  for i in range(2):
    state, metrics = compiled(state, batch, key(i))
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for i in range(steps):
    state, metrics = compiled(state, batch, key(100 + i))
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - t0) / steps
  loss = float(metrics["loss"])
  summary = None
  if profile:
    box = {"state": state}

    def run_step():
      box["state"], _ = compiled(box["state"], batch, key(7))
      jax.block_until_ready(box["state"])
    try:
      summary = profile_summary(run_step, compiled, keep_as)
    except Exception as e:  # A profiler quirk must not lose the timing.
      summary = f"  profile failed: {type(e).__name__}: {e}"
  if not np.isfinite(loss):
    raise FloatingPointError(f"stage {stage} batch {b}: loss {loss}")
  count = (model_flops.stage1_step if stage == 1 else model_flops.stage2_step)
  flops = (count(cfg, b, TITLE_LEN) if stage == 1 else
           count(cfg, b, TITLE_LEN, QUERY_LEN, N_NEG))
  return dict(step_s=step_s, compile_s=compile_s, flops=flops,
              xla_flops=xla_flops, loss=loss, profile=summary)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--size", default="base")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--batch", default="128,256")
  p.add_argument("--batch2", default=None, help="stage-2 batches (--batch)")
  p.add_argument("--stages", default="1,2")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--remat", action="store_true")
  p.add_argument("--scan", action="store_true",
                 help="model.scan_layers: compile each tower's layers once")
  p.add_argument("--profile", action="store_true",
                 help="also print where each step's device time goes")
  p.add_argument("--out", default=None,
                 help="with --profile: keep traces and HLO in this folder")
  p.add_argument("--variants", default="einsum",
                 help="attention implementations (einsum, cudnn), each "
                      "optionally +rbg")
  p.add_argument("--peak_tflops", type=float, default=989.4)
  p.add_argument("--read", default=None, metavar="PREFIX",
                 help="only summarise a kept PREFIX.trace.json.gz and "
                      "PREFIX.hlo.txt.gz (3 steps), then stop")
  args = p.parse_args()
  if args.read:
    with gzip.open(args.read + ".hlo.txt.gz", "rt") as f:
      hlo_text = f.read()
    print(format_op_times(*op_times(read_trace(args.read + ".trace.json.gz"),
                                    hlo_text), steps=3, top=40))
    return
  base_cfg = model_lib.model_config(args.size, dtype=args.dtype,
                                    remat=args.remat, scan_layers=args.scan)
  dev = jax.devices()[0]
  print(f"jax {jax.__version__}, device {dev.device_kind} ({dev.platform}); "
        f"size={args.size} dtype={args.dtype} remat={args.remat} "
        f"scan={args.scan}", flush=True)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
  mm = matmul_tflops() if dev.platform == "gpu" else float("nan")
  print(f"bf16 matmul 8192^3: {mm:.0f} TFLOP/s delivered "
        f"(datasheet peak used for MFU: {args.peak_tflops:.0f})", flush=True)
  last = {}  # stage -> MFU of its last run.
  runs = [(stage, b, variant)
          for stage in [int(s) for s in args.stages.split(",")]
          for b in [int(x) for x in (args.batch2 if stage == 2 and args.batch2
                                     else args.batch).split(",")]
          for variant in args.variants.split(",")]
  for stage, b, variant in runs:
    attention, _, prng = variant.partition("+")
    cfg = base_cfg.replace(attention=attention)
    name = f"stage{stage} batch {b} {variant}"
    keep_as = (os.path.join(args.out, f"s{stage}_b{b}_{variant}".replace(
        "+", "-")) if args.out else None)
    try:
      r = time_step(stage, cfg, b, args.steps, args.profile, prng or None,
                    keep_as)
    except Exception as e:  # Out of memory at a big batch: say so, go on.
      print(f"{name}: failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}", flush=True)
      continue
    achieved = r["flops"] / r["step_s"] / 1e12
    mfu = achieved / args.peak_tflops
    last[stage] = mfu
    print(f"{name}: {r['step_s'] * 1e3:.1f} ms/step, "
          f"{b / r['step_s']:.0f} ex/s, model {r['flops'] / 1e12:.2f} "
          f"TFLOP/step (XLA counts {r['xla_flops'] / 1e12:.2f}), "
          f"{achieved:.0f} TFLOP/s, MFU {100 * mfu:.1f}% "
          f"({100 * achieved / mm:.1f}% of delivered matmul), "
          f"compile {r['compile_s']:.0f}s, loss {r['loss']:.3f}", flush=True)
    if r["profile"]:
      print(r["profile"], flush=True)
  for stage, mfu in sorted(last.items()):
    print(f"mfu_stage{stage}_{args.size}_{args.dtype}: {mfu:.3f}")


if __name__ == "__main__":
  main()
