"""Layers and pure functions the towers share: initialisers with logical
axis names, Dense/LayerNorm as BLIP builds them, erf GELU, the MLP block,
pooling and normalisation of hidden states, scanning a tower's layers, and
the options every tower takes (Tower)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# BLIP initialises its new weights (cross-attention, heads) with N(0, 0.02).
INIT_STD = 0.02

# How a tower turns its hidden states (B, L, D) into one vector per row:
# position 0 ([CLS] or [ENC], whichever the ids carry) or the masked mean.
POOLINGS = ("cls", "enc", "mean")


def normal(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(
      nn.initializers.normal(stddev=INIT_STD), axes)


def zeros(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def dense(features: int, in_axis: str, out_axis: str | None, dtype,
          param_dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=normal((in_axis, out_axis)),
                  bias_init=zeros((out_axis,)), name=name)


def layer_norm(eps: float, dtype, param_dtype, name: str) -> nn.LayerNorm:
  # use_fast_variance=False: E[(x-mean)^2] as torch does (parity ~1e-7).
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, scale_init=ones(("embed",)),
                      bias_init=zeros(("embed",)), name=name)


def gelu(x: Array) -> Array:
  # BLIP uses exact erf GELU in both towers; flax's default is tanh. Written
  # with erf rather than nn.gelu's erfc form: same values (~5e-7), and XLA's
  # CPU erfc is a branchy polynomial about 4x slower than its erf.
  half = jnp.asarray(0.5, x.dtype)
  inv_sqrt2 = jnp.asarray(0.7071067811865476, x.dtype)
  return half * x * (1 + jax.lax.erf(x * inv_sqrt2))


def l2_normalize(x: Array) -> Array:
  """x / max(||x||, 1e-12) in float32, as torch.nn.functional.normalize."""
  x = x.astype(jnp.float32)
  # sqrt(max(|x|^2, eps^2)) == max(|x|, eps), and its gradient stays finite
  # at x = 0 (an all-padding row, e.g. a missing mined negative, pools to
  # 0; jnp.linalg.norm's gradient there is NaN and would poison the step).
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, 1e-24))


def masked_mean(hidden: Array, mask: Array) -> Array:
  """float32 (B, D) mean of hidden (B, L, D) over positions where mask is 1."""
  m = mask[..., None].astype(jnp.float32)
  return (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


def pool(hidden: Array, mask: Array, pooling: str) -> Array:
  """float32 (B, D) from hidden (B, L, D): position 0 or masked mean."""
  if pooling not in POOLINGS:
    raise ValueError(f"Unknown pooling {pooling!r}; choose from {POOLINGS}")
  if pooling == "mean":
    return masked_mean(hidden, mask)
  return hidden[:, 0].astype(jnp.float32)


class Tower(nn.Module):
  """What both encoder towers (ViT, BERT) take besides their geometry.

  remat recomputes each layer in the backward pass; scan_layers runs the
  layers as one lax.scan; attention is "einsum" or "cudnn" (ModelConfig).
  """
  config: Any  # The tower's VisionConfig or TextConfig.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False
  attention: str = "einsum"
  scan_layers: bool = False


class Mlp(nn.Module):
  hidden: int
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = dense(self.hidden, "embed", "mlp", self.dtype, self.param_dtype,
              "fc1")(x)
    x = gelu(x)
    return dense(self.width, "mlp", "embed", self.dtype, self.param_dtype,
                 "fc2")(x)


def run_scanned_layers(module: nn.Module, prefix: str, depth: int,
                       remat: bool, apply_layer, x: Array,
                       dropout_rng: Array | None) -> Array:
  """x through `module`'s layers <prefix>_0 .. <prefix>_{depth-1} as one scan.

  `apply_layer(params, x, rngs) -> x` applies one layer with its params;
  the layers' params are stacked on a leading axis and scanned over, layer
  i drawing dropout from fold_in(dropout_rng, i).
  """
  params = module.variables["params"]
  stacked = jax.tree.map(lambda *p: jnp.stack(p),
                         *[params[f"{prefix}_{i}"] for i in range(depth)])

  def body(x, layer):
    p, i = layer
    rngs = (None if dropout_rng is None else
            {"dropout": jax.random.fold_in(dropout_rng, i)})
    return apply_layer(p, x, rngs), None

  if remat:
    body = jax.checkpoint(body)
  x, _ = jax.lax.scan(body, x, (stacked, jnp.arange(depth)))
  return x

