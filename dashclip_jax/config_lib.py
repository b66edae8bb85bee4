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


def mesh_config() -> list[tuple[str, int]]:
  # All devices on the data axis; fsdp/tensor are opt-in per experiment.
  return [("data", -1), ("fsdp", 1), ("tensor", 1)]


def model_block(size: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      size=size,           # dashclip_jax.model.model_config size.
      dtype="float32",     # Compute dtype; "bfloat16" on accelerators.
      remat=False,
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
