"""Helpers for configs/*.py: `:variant,key=value` arguments, shared blocks."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "tiny,batch=16" into typed fields over `defaults`.

  A bare word sets `variant` (when `variant` is a default); `k=v` pairs are
  cast to the default's type. Unknown keys are rejected with the known ones.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    if "=" not in item:
      if "variant" not in defaults:
        raise ValueError(f"config argument {item!r}: expected key=value")
      out.variant = item
      continue
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: "
                       f"{sorted(defaults)}")
    kind = type(defaults[key])
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool \
        else kind(value)
  return out


VARIANTS = ("tiny", "demo", "fashion", "base")


def by_variant(variant: str, tiny, demo, fashion, base):
  """The value of `variant` among the named variants."""
  return {"tiny": tiny, "demo": demo, "fashion": fashion, "base": base}[
      variant]


def stage_config(stage: str, arg: str | None
                 ) -> tuple[ml_collections.ConfigDict, str]:
  """-> (config, variant): what every stage config starts with (stage, seed,
  mesh, model, train, optim, eval and checkpoint blocks sized by the variant
  of `arg`). The caller sets the variant's steps, learning rate and the rest.
  """
  v = parse_arg(arg, variant="base").variant
  if v not in VARIANTS:
    raise ValueError(f"unknown {stage} variant {v!r}: "
                     f"{', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.mesh = mesh_config()
  c.model = model_block(by_variant(v, "tiny", "small", "small", "base"))
  # 64 px: the demo's images; the fashion run's budget (its photos are 128).
  c.model.image_size = by_variant(v, 0, 64, 64, 0)
  c.train = train_block(batch_size=by_variant(v, 8, 32, 32, 256),
                        total_steps=0)
  c.train.fast_compile = v == "tiny"
  c.train.log_every = by_variant(v, 2, 20, 50, 50)
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-5, init_lr=0.0, end_lr=0.0, warmup_steps=by_variant(v, 1, 10, 10, 0),
      weight_decay=0.05, clip_norm=1.0,
      # "regex=mult; ...", first match wins, 0 freezes: "img/.*=0.1; .*=1".
      lr_mults=".*=1",
  ))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=by_variant(v, 16, 64, 64, 64)))
  c.checkpoint = checkpoint_block()
  return c, v


def mesh_config() -> list[tuple[str, int]]:
  # All devices on the data axis; fsdp/tensor are opt-in per experiment.
  return [("data", -1), ("fsdp", 1), ("tensor", 1)]


def model_block(size: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      size=size,           # dashclip_jax.model.model_config size.
      dtype="float32",     # Compute dtype; "bfloat16" on accelerators.
      remat=False,
      attention="einsum",  # "cudnn": fused ViT attention (model.py).
      scan_layers=False,   # True: compile each tower's layers once (scan).
      image_size=0,        # 0: the size's own.
      text_dropout=-1.0,   # < 0: the size's own.
  ))


def checkpoint_block() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      every_steps=50, keep=2, async_save=True,
      best_metric="eval/r@1",  # Kept besides the last `keep`.
  ))


def train_block(batch_size: int, total_steps: int
                ) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=batch_size,  # Global batch.
      total_steps=total_steps,
      accum_steps=1,          # GradCache microbatches per step.
      log_every=10,
      eval_every=100,
      nan_policy="stop",      # "stop" or "skip" (skip the update, count it).
      fast_compile=False,     # XLA opt level 0 for the step (CI-scale runs).
  ))
