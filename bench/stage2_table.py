"""Stage-2 step with the cached product table vs the per-batch product forward.

  python bench/stage2_table.py [--batch 32] [--negatives 4] [--steps 8]

Same model, batch, loss and optimizer on both sides (the demo's geometry:
the small ViT at 64 px, `--image_size` to change, and MiniLM-L6-shaped text
and query towers, product
tower body frozen, product_proj + query tower trained):
  per_batch: each step runs the frozen product tower (ViT + image-grounded
    text encoder, eval mode) on the batch, then QCC;
  table: the batch carries the tower's pooled features (what the trainer
    computes once per run), so a step runs only the query tower and
    product_proj.
Steps of the two sides are interleaved and timed one by one (medians), so
background load hits both alike. Device work only: with the table the data
pipeline also stops decoding and resizing images, which this leaves out. The last line is the speedup (table /
per_batch examples per second).
"""

import argparse
import dataclasses
import statistics
import time

from dashclip_jax.runtime import host_memory

host_memory.reuse_freed_memory_unless_disabled()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dashclip_jax import model as model_lib  # noqa: E402
from dashclip_jax.model import tokenizer as tok  # noqa: E402
from dashclip_jax.train import optim  # noqa: E402
from dashclip_jax.train import state as train_state  # noqa: E402
from dashclip_jax.train import step_config
from dashclip_jax.train import steps as ts  # noqa: E402


def demo_geometry(image_size: int) -> model_lib.ModelConfig:
  c = model_lib.model_config("small")
  minilm = dataclasses.replace(c.text, width=384, depth=6, heads=12,
                               mlp_dim=1536, max_positions=512)
  return c.replace(vision=dataclasses.replace(c.vision,
                                              image_size=image_size),
                   text=minilm,
                   query=dataclasses.replace(minilm, cross_attention=False),
                   embed_dim=384, query_pooling="mean", product_pooling="mean")


def make_batch(cfg, b: int, n_neg: int, lt: int = 24, lq: int = 16):
  rng = np.random.default_rng(0)
  s = cfg.vision.image_size
  ids = rng.integers(1000, 30000, (b, lt)).astype(np.int32)
  ids[:, 0] = tok.CLS_ID
  qids = rng.integers(1000, 30000, (b, lq)).astype(np.int32)
  qids[:, 0] = tok.CLS_ID
  return {"image": rng.standard_normal((b, s, s, 3)).astype(np.float32),
          "title_ids": ids, "title_mask": np.ones((b, lt), np.int32),
          "product_id": np.arange(b, dtype=np.int32), "query_ids": qids,
          "query_mask": np.ones((b, lq), np.int32),
          "neg_query_ids": rng.integers(1000, 30000,
                                        (b, n_neg, lq)).astype(np.int32),
          "neg_query_mask": np.ones((b, n_neg, lq), np.int32),
          "neg_valid": np.ones((b, n_neg), bool),
          "label_weight": np.ones((b,), np.float32)}


# configs/stage2.py:tiny's freeze rules: the product tower body and the
# stage-1 heads frozen, product_proj trained.
STAGE2_FROZEN = (
    (r"(img|txt|vision_proj|text_proj|itm_head)/.*", 0.0), (".*", 1.0))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--negatives", type=int, default=4)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=64)
  args = parser.parse_args()
  cfg = demo_geometry(args.image_size)
  step_cfg = step_config.StepConfig(train_product_tower=False)
  opt = optim.OptimConfig(lr=1e-4, total_steps=1000,
                          lr_mults=STAGE2_FROZEN)
  params = model_lib.unbox(jax.jit(
      lambda r: model_lib.init_params(cfg, r))(jax.random.key(0)))
  tx = optim.make_optimizer(opt, params)
  batch = make_batch(cfg, args.batch, args.negatives)
  feats = jax.jit(ts.make_product_features_fn(cfg, step_cfg))(
      params, batch, jax.random.key(0))
  cached = {k: v for k, v in batch.items()
            if k not in ("image", "title_ids", "title_mask")}
  cached["product_features"] = np.asarray(feats)

  sides = {}
  for name, b in (("per_batch", batch), ("table", cached)):
    state = train_state.init_state(cfg, step_cfg, tx, jax.random.key(0),
                                   params=params)
    step = jax.jit(ts.make_stage2_step(cfg, step_cfg, tx),
                   donate_argnums=(0,))
    t0 = time.perf_counter()
    state, m = step(state, b, jax.random.key(1))
    jax.block_until_ready(m)
    sides[name] = {"step": step, "state": state, "batch": b, "times": [],
                   "compile": time.perf_counter() - t0,
                   "loss": float(m["loss"])}
  for i in range(args.steps):
    for side in sides.values():
      t0 = time.perf_counter()
      side["state"], m = side["step"](side["state"], side["batch"],
                                      jax.random.key(2 + i))
      jax.block_until_ready(m)
      side["times"].append(time.perf_counter() - t0)
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), batch "
        f"{args.batch}, {args.negatives} negatives, {args.image_size} px, "
        f"{args.steps} steps")
  speed = {}
  for name, side in sides.items():
    med = statistics.median(side["times"])
    speed[name] = args.batch / med
    print(f"{name}: {speed[name]:.1f} ex/s ({med * 1e3:.0f} ms/step, compile "
          f"{side['compile']:.1f}s, first loss {side['loss']:.6f})")
  print(f"stage2_table_speedup: {speed['table'] / speed['per_batch']:.2f}")


if __name__ == "__main__":
  main()
