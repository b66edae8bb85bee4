"""Stage-1 input pipeline throughput vs what the train steps consume.

  python bench/data_pipeline.py [--batch 32] [--image_size 224] [--workers 2]

Pipeline side: `train_datasets.stage1_dataset` on the real fashion catalog
(../shared/data/fashion, 128 px JPEGs) when present, else the embedded
synthetic catalog: JPEG/PNG decode + BLIP train augmentation
(RandomResizedCrop bicubic, flip, RandomAugment(2, 5)) + normalise + title
tokenisation at `image_size`, with 0 and N worker processes. Timed after the
first batch (worker start-up and warm-up excluded).

Step side: examples/s of the stage-1 train step (`train_steps`: ITC + ITM,
forward + backward + AdamW) for the "tiny" and "small" models consuming the
same batch shape (image_size overridden to the pipeline's). Falls back to a
jitted forward+backward of an in-batch ITC loss if `train_steps` is missing.

Each model is also compared at its own image size (tiny 32 px, small
128 px): the pipeline producing those images vs the step consuming them.
The pipeline and the step are measured one after the other on the same
machine; the last line is the smallest of the ratios
  (pipeline examples/s) / (step examples/s)
over {224 px: best pipeline vs fastest step, each model at its own size},
which must be >= 1: the loader is never the bottleneck.
"""

import argparse
import dataclasses
import importlib.util
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from dashclip_jax.data import catalog as catalog_lib  # noqa: E402
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import synthetic  # noqa: E402
from dashclip_jax.data import train_datasets  # noqa: E402
from dashclip_jax import model as model_lib  # noqa: E402

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                       "data", "fashion", "styles.csv")


def load_catalog() -> tuple[catalog_lib.Catalog, str]:
  if os.path.isfile(FASHION):
    cat = catalog_tables.load_catalog(FASHION).subset("train")
    return cat, f"fashion train ({len(cat)} products, 128 px JPEG)"
  cat = synthetic.synthetic_data().train_catalog
  return cat, f"synthetic train ({len(cat)} products, 96 px PNG)"


def bench_pipeline(cat, batch, image_size, workers, num_batches):
  ds = train_datasets.stage1_dataset(
      cat, train_datasets.PipelineOptions(batch_size=batch, shard=(0, 1),
                                          seed=0, worker_count=workers),
      image_size=image_size, max_length=30, min_scale=0.2)
  it = iter(ds)
  first = next(it)  # Start-up (workers spawn, tokenizer load) not timed.
  t0 = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  dt = time.perf_counter() - t0
  it.close()
  return batch * num_batches / dt, first


def _step_with_train_steps(size, batch_np, steps):
  """Examples/s of the real stage-1 train step (ITC + ITM + AdamW)."""
  from dashclip_jax.train import optim  # pylint: disable=g-import-not-at-top
  from dashclip_jax.train import sharding  # pylint: disable=g-import-not-at-top
  from dashclip_jax.train import state as train_state  # pylint: disable=g-import-not-at-top
  from dashclip_jax.train import step_config
  from dashclip_jax.train import steps as ts  # pylint: disable=g-import-not-at-top
  cfg = _model_config(size, batch_np)
  mesh = sharding.make_mesh([("data", 1)], jax.devices()[:1])
  abstract = model_lib.abstract_params(cfg)
  oc = optim.OptimConfig(lr=1e-5, warmup_steps=10, total_steps=1000)
  tx = optim.make_optimizer(oc, abstract)
  sc = step_config.StepConfig()
  state = train_state.init_state(cfg, sc, tx, jax.random.key(0), mesh)
  keys = ("image", "ids", "mask", "product_id")
  batch = sharding.global_batch({k: batch_np[k] for k in keys}, mesh)
  step = train_state.jit_step(ts.make_stage1_step(cfg, sc, tx, mesh),
                              train_state.state_shardings(state), batch, mesh)
  for i in range(2):  # Compile + one warm step.
    state, m = step(state, batch, jax.random.key(i))
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(steps):
    state, m = step(state, batch, jax.random.key(10 + i))
  jax.block_until_ready(m)
  return batch_np["ids"].shape[0] * steps / (time.perf_counter() - t0)


def _step_fallback(size, batch_np, steps):
  """Jitted forward+backward of an in-batch ITC loss (no optimizer)."""
  cfg = _model_config(size, batch_np)
  module = model_lib.DashClip(cfg)
  params = model_lib.unbox(model_lib.init_params(cfg, jax.random.key(0)))

  def loss_fn(p, b, rng):
    img, _ = module.apply({"params": p}, b["image"],
                          method=model_lib.DashClip.encode_image)
    txt, _ = module.apply({"params": p}, b["ids"], b["mask"], False,
                          method=model_lib.DashClip.encode_text,
                          rngs={"dropout": rng})
    logits = img @ txt.T / 0.07
    labels = jnp.arange(logits.shape[0])
    lsm = jax.nn.log_softmax
    return -(lsm(logits)[labels, labels].mean() +
             lsm(logits.T)[labels, labels].mean()) / 2

  grad = jax.jit(jax.value_and_grad(loss_fn))
  b = {k: jnp.asarray(batch_np[k]) for k in ("image", "ids", "mask")}
  for i in range(2):
    out = grad(params, b, jax.random.key(i))
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for i in range(steps):
    out = grad(params, b, jax.random.key(10 + i))
  jax.block_until_ready(out)
  return batch_np["ids"].shape[0] * steps / (time.perf_counter() - t0)


def _model_config(size, batch_np):
  cfg = model_lib.model_config(size)
  s = batch_np["image"].shape[1]
  return cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=s))


def bench_step(size, batch_np, steps):
  if importlib.util.find_spec("dashclip_jax.train.steps") is not None:
    return _step_with_train_steps(size, batch_np, steps), "train_steps"
  return _step_fallback(size, batch_np, steps), "fwd+bwd ITC fallback"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
  ap.add_argument("--num_batches", type=int, default=12)
  ap.add_argument("--steps", type=int, default=3)
  args = ap.parse_args()

  cat, what = load_catalog()
  print(f"data: {what}; batch {args.batch}, {args.image_size} px, "
        f"{os.cpu_count()} CPU cores, jax {jax.default_backend()}")
  pipe = {}
  batch_np = None
  for workers in (0, args.workers):
    eps, first = bench_pipeline(cat, args.batch, args.image_size, workers,
                                args.num_batches)
    batch_np = batch_np or first
    pipe[workers] = eps
    print(f"pipeline stage1 workers={workers}: {eps:8.1f} examples/s")
  best_workers = max(pipe, key=pipe.get)
  ratios = {}
  step224 = {}
  for size in ("tiny", "small"):
    eps, how = bench_step(size, batch_np, args.steps)
    step224[size] = eps
    print(f"train step {size} @ {args.image_size} px ({how}): "
          f"{eps:8.1f} examples/s")
  ratios[f"{args.image_size} px"] = max(pipe.values()) / max(step224.values())
  # Each model at its own image size too, so a small model's fast step is
  # compared with the pipeline producing its (smaller) images.
  for size in ("tiny", "small"):
    native = model_lib.model_config(size).vision.image_size
    if native == args.image_size:
      continue
    p_eps, nb = bench_pipeline(cat, args.batch, native, best_workers,
                               args.num_batches)
    s_eps, how = bench_step(size, nb, args.steps)
    print(f"{size} @ native {native} px: pipeline (workers={best_workers}) "
          f"{p_eps:8.1f} examples/s, train step ({how}) {s_eps:8.1f} "
          "examples/s")
    ratios[f"{size} @ {native} px"] = p_eps / s_eps
  for k, v in ratios.items():
    print(f"ratio {k}: {v:.2f}")
  # The smallest ratio over the comparisons: the loader is never the
  # bottleneck if even this is >= 1.
  print(f"pipeline_to_step_ratio: {min(ratios.values()):.2f}")

if __name__ == "__main__":
  main()
