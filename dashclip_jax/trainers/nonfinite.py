"""The NaN/Inf policy (`train.nan_policy`): a bad step never updates the
state; "stop" raises at the next log step, "skip" counts and goes on."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from dashclip_jax.runtime import config_files

log = logging.getLogger("dashclip_jax")

NAN_POLICIES = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
  """A NaN/Inf loss under nan_policy="stop"."""


def check_policy(policy: str) -> None:
  if policy not in NAN_POLICIES:
    raise config_files.ConfigError(f"train.nan_policy={policy!r}: use one of "
                                   f"{NAN_POLICIES}")


def guard_nonfinite(step_fn):
  """Wraps a step so a NaN/Inf loss leaves the state untouched.

  The step's metrics gain "nonfinite" (1.0 when the update was dropped); the
  trainer fetches these flags at log steps only and stops or counts them.
  """
  def guarded(state, batch, rng):
    new, metrics = step_fn(state, batch, rng)
    ok = jnp.isfinite(metrics["loss"])
    new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
    return new, {**metrics, "nonfinite": 1.0 - ok.astype(jnp.float32)}
  return guarded


def check_nonfinite(steps: list[int], flags: list[jax.Array],
                    policy: str) -> int:
  """Number of skipped steps among `steps`; raises under policy "stop"."""
  bad = [s for s, f in zip(steps, jax.device_get(flags)) if float(f) > 0]
  if bad and policy != "skip":
    raise NonFiniteLossError(
        f"loss is NaN/Inf at step {bad[0]}; stopping (the state before it is "
        "kept; --config.train.nan_policy=skip skips such steps instead)")
  for s in bad:
    log.warning("non-finite loss at step %d: update skipped", s)
  return len(bad)
