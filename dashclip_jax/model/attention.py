"""Multi-head attention: the Linen module and its two implementations
(einsums with a float32 softmax; jax's fused dot_product_attention)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dashclip_jax.model import layers

Array = jax.Array


class Attention(nn.Module):
  """Multi-head attention with separate q/k/v projections.

  Shapes: x (B, Lq, D), kv (B, Lk, Dk), mask bool (B, Lk) or None (all keys).
  """
  heads: int
  width: int
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  implementation: str = "einsum"  # ModelConfig.attention.

  @nn.compact
  def __call__(self, x: Array, kv: Array, mask: Array | None) -> Array:
    head_dim = self.width // self.heads
    proj = functools.partial(
        nn.DenseGeneral, features=(self.heads, head_dim), axis=-1,
        dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=layers.normal(("embed", "heads", "kv")),
        bias_init=layers.zeros(("heads", "kv")))
    q = proj(name="query")(x)  # (B, Lq, H, Dh)
    k = proj(name="key")(kv)  # (B, Lk, H, Dh)
    v = proj(name="value")(kv)
    probs_dropout = self.dropout > 0 and not self.deterministic
    if self.implementation == "einsum" or mask is not None or probs_dropout:
      drop = functools.partial(nn.Dropout(self.dropout),
                               deterministic=self.deterministic)
      out = einsum_attention(q, k, v, mask, drop, self.dtype)
    else:
      # jax's fused attention has no probs dropout, so only calls without
      # it come here; keys are all valid (mask None).
      out = fused_attention(q, k, v)
    return nn.DenseGeneral(
        self.width, axis=(-2, -1), dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=layers.normal(("heads", "kv", "embed")),
        bias_init=layers.zeros(("embed",)), name="out")(out)


# cuDNN's fused attention refused the ViT's 197 tokens in training (jax
# 0.11.2, H200): lengths are padded up to a multiple of this, and the
# padding masked by sequence lengths (not a bias).
FUSED_ATTENTION_MULTIPLE = 64


def fused_attention(q: Array, k: Array, v: Array) -> Array:
  """jax.nn.dot_product_attention over all keys (cuDNN on GPU), padded.

  q (B, Lq, H, Dh), k/v (B, Lk, H, Dh) -> (B, Lq, H, Dh). Lq and Lk are
  padded with zeros to a multiple of FUSED_ATTENTION_MULTIPLE; padded keys
  are masked out through `key_value_seq_lengths` and padded queries are
  dropped, so the result equals attention over the unpadded inputs.
  """
  b, q_len, _, _ = q.shape
  k_len = k.shape[1]
  m = FUSED_ATTENTION_MULTIPLE

  def pad(x, length):
    extra = -length % m
    return jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0))) if extra else x

  out = jax.nn.dot_product_attention(
      pad(q, q_len), pad(k, k_len), pad(v, k_len),
      query_seq_lengths=jnp.full((b,), q_len, jnp.int32),
      key_value_seq_lengths=jnp.full((b,), k_len, jnp.int32),
      implementation="cudnn" if jax.default_backend() == "gpu" else None)
  return out[:, :q_len]


def einsum_attention(q: Array, k: Array, v: Array, mask: Array | None,
                     drop_probs, dtype) -> Array:
  """q (B, Lq, H, Dh), k/v (B, Lk, H, Dh), mask (B, Lk) -> (B, Lq, H, Dh).

  Softmax in float32; `drop_probs` is applied to the (B, H, Lq, Lk) probs.
  """
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  scores = scores * (q.shape[-1] ** -0.5)
  if mask is not None:
    big_neg = jnp.finfo(jnp.float32).min
    scores = jnp.where(mask[:, None, None, :].astype(bool), scores, big_neg)
  probs = drop_probs(jax.nn.softmax(scores, axis=-1).astype(dtype))
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

