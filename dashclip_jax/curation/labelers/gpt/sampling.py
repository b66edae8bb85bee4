"""Sampled decoding of a batch of prompts: temperature and top-p (nucleus),
one jitted loop over the new tokens.

`sample` keeps a KV cache: one forward over the left-padded prompts (B, P)
fills every layer's keys and values for slots 0 .. P-1, then each new
token is one single-token forward that appends its keys and values at its
slot P + t. The layers are written here as functions of `model.Llama`'s
params (same norms, `model.rotary`, grouped-query attention and SwiGLU;
`model.Llama` itself has no cache: labelling scores one token).
`sample_uncached` re-encodes the whole (B, P + T) buffer with `model.Llama`
at every step: T times the prompt's cost, the reference the cached path is
tested against.

Positions count real tokens only, pad slots are never attended, so a row's
tokens do not depend on its padding; each row samples from its own key
(`row_keys`) folded with the step number, so not on its batch either.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dashclip_jax.curation.labelers.gpt import model as model_lib


def top_p_logits(logits: jax.Array, top_p: float) -> jax.Array:
  """float32 (B, V): logits outside each row's nucleus (the fewest most
  likely tokens whose probability reaches top_p) set to -inf; the most
  likely token always stays."""
  if top_p >= 1.0:
    return logits
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, -1)
  probs = jax.nn.softmax(sorted_logits, -1)
  before = jnp.cumsum(probs, -1) - probs  # Mass of the better tokens.
  sorted_logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)
  inverse = jnp.argsort(order, axis=-1)
  return jnp.take_along_axis(sorted_logits, inverse, -1)


def _choose(logits: jax.Array, row_keys: jax.Array, t, temperature: float,
            top_p: float) -> jax.Array:
  """int32 (B,): step t's token per row (argmax when temperature is 0)."""
  if temperature <= 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = top_p_logits(logits / temperature, top_p)
  keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(row_keys)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _norm(x: jax.Array, scale: jax.Array, eps: float, dtype) -> jax.Array:
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps)
  return (scale * x32).astype(dtype)


def _layer(c: model_lib.LlamaConfig, x: jax.Array, p: Any, k_cache: jax.Array,
           v_cache: jax.Array, allowed: jax.Array, positions: jax.Array,
           start) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One `model.Block` over x (B, L, D) at slots start .. start+L-1; its
  keys/values land in the caches (B, S, KV, Dh); allowed (B, L, S)."""
  dtype = jnp.dtype(c.dtype)
  a = p["attn"]
  h = _norm(x, p["attn_norm"]["scale"], c.norm_eps, dtype)
  proj = lambda w: jnp.einsum("bld,dhk->blhk", h, w.astype(dtype))
  q = model_lib.rotary(proj(a["query"]["kernel"]), positions, c.rope_theta)
  k = model_lib.rotary(proj(a["key"]["kernel"]), positions, c.rope_theta)
  k_cache = jax.lax.dynamic_update_slice_in_dim(
      k_cache, k.astype(k_cache.dtype), start, 1)
  v_cache = jax.lax.dynamic_update_slice_in_dim(
      v_cache, proj(a["value"]["kernel"]).astype(v_cache.dtype), start, 1)
  b, length = x.shape[:2]
  group = c.heads // c.kv_heads
  q = q.reshape(b, length, c.kv_heads, group, c.head_dim)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k_cache.astype(dtype),
                      preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(jnp.float32(c.head_dim))
  scores = jnp.where(allowed[:, None, None], scores,
                     jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, -1).astype(dtype)
  out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v_cache.astype(dtype)).reshape(
      b, length, c.heads, c.head_dim)
  x = x + jnp.einsum("blhk,hkd->bld", out, a["out"]["kernel"].astype(dtype))
  m = p["mlp"]
  h = _norm(x, p["mlp_norm"]["scale"], c.norm_eps, dtype)
  dense = lambda v, w: jnp.einsum("bld,df->blf", v, w.astype(dtype))
  h = jax.nn.silu(dense(h, m["gate"]["kernel"])) * dense(h, m["up"]["kernel"])
  return x + dense(h, m["down"]["kernel"]), k_cache, v_cache


def _cached_forward(c: model_lib.LlamaConfig, params: Any, ids: jax.Array,
                    positions: jax.Array, live: jax.Array, start, caches):
  """ids (B, L) at slots start.. -> (float32 (B, V) logits of the last
  one, caches); live (B, S): the slots written so far, these included."""
  dtype = jnp.dtype(c.dtype)
  x = params["embed"]["embedding"][ids].astype(dtype)
  slots = jnp.arange(live.shape[1])
  allowed = (live[:, None, :] > 0) & (
      slots[None, None, :] <= start + jnp.arange(ids.shape[1])[None, :, None])

  def body(x, layer):
    p, k_cache, v_cache = layer
    x, k_cache, v_cache = _layer(c, x, p, k_cache, v_cache, allowed,
                                 positions, start)
    return x, (k_cache, v_cache)
  x, caches = jax.lax.scan(body, x, (params["blocks"], *caches))
  h = _norm(x[:, -1], params["final_norm"]["scale"], c.norm_eps, dtype)
  table = (params["embed"]["embedding"] if c.tie_embeddings
           else params["lm_head"].T)
  logits = jnp.einsum("bd,vd->bv", h, table.astype(dtype),
                      preferred_element_type=jnp.float32)
  return logits, caches


@functools.partial(jax.jit, static_argnames=("config", "new_tokens",
                                             "temperature", "top_p"))
def sample(params: Any, ids: jax.Array, mask: jax.Array,
           row_keys: jax.Array, *, config: model_lib.LlamaConfig,
           new_tokens: int, temperature: float, top_p: float) -> jax.Array:
  """int32 (B, new_tokens) sampled continuations of left-padded prompts,
  with a KV cache (arguments as `sample_uncached`'s)."""
  c = config
  b, p = ids.shape
  size = p + new_tokens
  shape = (c.depth, b, size, c.kv_heads, c.head_dim)
  caches = (jnp.zeros(shape, jnp.dtype(c.dtype)),) * 2
  live = jnp.concatenate([mask, jnp.zeros((b, new_tokens), mask.dtype)], 1)
  positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
  logits, caches = _cached_forward(c, params, ids, positions, live, 0, caches)
  token = _choose(logits, row_keys, 0, temperature, top_p)
  real = mask.sum(-1)  # The first new token's position.
  out = jnp.zeros((b, new_tokens), jnp.int32).at[:, 0].set(token)

  def step(t, carry):  # Token t-1 in at slot p+t-1; token t out.
    out, live, caches = carry
    slot = p + t - 1
    live = jax.lax.dynamic_update_index_in_dim(
        live, jnp.ones((b,), live.dtype), slot, 1)
    logits, caches = _cached_forward(
        c, params, jax.lax.dynamic_slice_in_dim(out, t - 1, 1, 1),
        (real + t - 1)[:, None], live, slot, caches)
    token = _choose(logits, row_keys, t, temperature, top_p)
    out = jax.lax.dynamic_update_index_in_dim(out, token, t, 1)
    return out, live, caches

  out, _, _ = jax.lax.fori_loop(1, new_tokens, step, (out, live, caches))
  return out


@functools.partial(jax.jit, static_argnames=("config", "new_tokens",
                                             "temperature", "top_p"))
def sample_uncached(params: Any, ids: jax.Array, mask: jax.Array,
                    row_keys: jax.Array, *, config: model_lib.LlamaConfig,
                    new_tokens: int, temperature: float, top_p: float
                    ) -> jax.Array:
  """int32 (B, new_tokens) sampled continuations of left-padded prompts.

  Args:
    params: the Llama params.
    ids, mask: int32 (B, P) left-padded prompts (`gpt.prompts` pads so).
    row_keys: (B,) typed PRNG keys, one per row.
    temperature: > 0 scales the logits; 0 is greedy (argmax).
    top_p: nucleus mass in (0, 1]; 1 keeps every token.
  Stop tokens are the caller's: rows keep sampling to `new_tokens`.
  """
  b, p = ids.shape
  model = model_lib.Llama(config)
  buf = jnp.concatenate([ids, jnp.zeros((b, new_tokens), ids.dtype)], 1)
  live = jnp.concatenate([mask, jnp.zeros((b, new_tokens), mask.dtype)], 1)

  def step(t, carry):
    buf, live = carry
    hidden = model.apply({"params": params}, buf, live,
                         method=model_lib.Llama.encode)
    h = jax.lax.dynamic_index_in_dim(hidden, p + t - 1, 1, keepdims=False)
    logits = model.apply({"params": params}, h,
                         method=model_lib.Llama.project)  # (B, V)
    token = _choose(logits, row_keys, t, temperature, top_p)
    buf = jax.lax.dynamic_update_index_in_dim(
        buf, token.astype(buf.dtype), p + t, 1)
    live = jax.lax.dynamic_update_index_in_dim(
        live, jnp.ones((b,), live.dtype), p + t, 1)
    return buf, live

  buf, _ = jax.lax.fori_loop(0, new_tokens, step, (buf, live))
  return buf[:, p:]


def row_keys(seed: int, rows: np.ndarray) -> jax.Array:
  """(B,) keys: row r's key is fold_in(key(seed), rows[r]) (e.g. a draft's
  global number), whatever batch it is in."""
  base = jax.random.key(seed)
  return jax.vmap(lambda r: jax.random.fold_in(base, r))(
      jnp.asarray(rows, jnp.uint32))


def cut_at_stop(tokens: np.ndarray, stop_ids: set[int]) -> list[list[int]]:
  """Each row's tokens before its first stop token."""
  out = []
  for row in np.asarray(tokens).tolist():  # Per generated query.
    end = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
    out.append(row[:end])
  return out
