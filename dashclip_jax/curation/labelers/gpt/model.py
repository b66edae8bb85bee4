"""A Llama-architecture decoder-only LM in Flax (SmolLM2's family).

RMSNorm, rotary embeddings, grouped-query attention, a SwiGLU MLP and, as
the checkpoint says, embeddings tied to the output projection. Rotary
embeddings rotate *adjacent* pairs (dims 2i, 2i+1): llama.cpp's ordering,
the one a GGUF's q/k weights are stored in. transformers reads a GGUF by
un-permuting q/k into its own half-split ordering (`rotate_half`); rotating
the stored weights the llama.cpp way gives the same attention scores, so
the GGUF tensors load untouched and an HF checkpoint is permuted into this
ordering instead (`gguf_loader.hf_to_gguf_tensors`).

Padding: any mix of left and right padding. Positions count the real
tokens (`cumsum(mask) - 1`), keys where mask is 0 are never attended, so a
row's logits at its real tokens do not depend on its padding. The labeler
pads on the left, which puts every row's next-token position last.

There is no KV cache: labelling scores one next token at the answer
position. The layers are one `nn.scan` (params stacked on a leading
"layers" axis: one compiled layer, whatever the depth) with an optional
remat. Every param carries logical axis names (`sharding.DEFAULT_RULES`);
params are float32, `dtype` sets the compute dtype (softmax, norms and
rotary angles stay float32).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Geometry and numerics; defaults are SmolLM2-135M's."""
  vocab_size: int = 49152
  width: int = 576
  depth: int = 30
  heads: int = 9
  kv_heads: int = 3
  head_dim: int = 64
  mlp_dim: int = 1536
  rope_theta: float = 100000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  dtype: str = "float32"  # Compute dtype: "float32" or "bfloat16".
  remat: bool = False     # Recompute each layer in the backward pass.

  def __post_init__(self):
    if self.heads % self.kv_heads:
      raise ValueError(f"heads {self.heads} is not a multiple of kv_heads "
                       f"{self.kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim {self.head_dim} must be even (rotary pairs)")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype {self.dtype!r} not in ('float32', 'bfloat16')")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def tiny_config(vocab_size: int = 256, **overrides) -> LlamaConfig:
  """A 2-layer test geometry with grouped-query attention (4 heads, 2 kv)."""
  return LlamaConfig(**{**dict(vocab_size=vocab_size, width=32, depth=2,
                               heads=4, kv_heads=2, head_dim=8, mlp_dim=64,
                               rope_theta=10000.0), **overrides})


def _init(axes: tuple[str | None, ...], std: float = INIT_STD):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class RMSNorm(nn.Module):
  eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(
        nn.initializers.ones_init(), ("embed",)), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True)
                              + self.eps)
    return (scale * x32).astype(self.dtype)


def rotary(x: Array, positions: Array, theta: float) -> Array:
  """x (B, L, H, D) rotated by positions (B, L), adjacent pairs (2i, 2i+1)
  turned by angle position * theta^(-2i/D) (llama.cpp's ordering)."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  angle = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, L, D/2)
  cos, sin = jnp.cos(angle)[:, :, None], jnp.sin(angle)[:, :, None]
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], d // 2, 2)
  even, odd = pairs[..., 0], pairs[..., 1]
  out = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], -1)
  return out.reshape(x.shape).astype(x.dtype)


class Attention(nn.Module):
  """Causal grouped-query attention: query head h reads kv head h // G."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: Array, allowed: Array, positions: Array) -> Array:
    c = self.config
    dtype = jnp.dtype(c.dtype)
    proj = lambda n, name: nn.DenseGeneral(
        (n, c.head_dim), use_bias=False, dtype=dtype,
        kernel_init=_init(("embed", "heads", "kv")), name=name)(x)
    q = rotary(proj(c.heads, "query"), positions, c.rope_theta)
    k = rotary(proj(c.kv_heads, "key"), positions, c.rope_theta)
    v = proj(c.kv_heads, "value")
    b, length = x.shape[:2]
    group = c.heads // c.kv_heads
    q = q.reshape(b, length, c.kv_heads, group, c.head_dim)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k,
                        preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(c.head_dim))
    # A finite floor, not -inf: a padding query that may attend to nothing
    # gets a uniform (ignored) row instead of NaNs.
    scores = jnp.where(allowed[:, None, None], scores,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, -1).astype(dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(
        b, length, c.heads, c.head_dim)
    return nn.DenseGeneral(c.width, axis=(-2, -1), use_bias=False,
                           dtype=dtype,
                           kernel_init=_init(("heads", "kv", "embed")),
                           name="out")(out)


class Mlp(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    dense = lambda n, axes, name: nn.Dense(
        n, use_bias=False, dtype=jnp.dtype(c.dtype), kernel_init=_init(axes),
        name=name)
    h = nn.silu(dense(c.mlp_dim, ("embed", "mlp"), "gate")(x)) * dense(
        c.mlp_dim, ("embed", "mlp"), "up")(x)
    return dense(c.width, ("mlp", "embed"), "down")(h)


class Block(nn.Module):
  """One pre-norm layer, in scan form: (x, shared inputs) -> (x, None)."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: Array, allowed: Array, positions: Array):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    x = x + Attention(c, name="attn")(
        RMSNorm(c.norm_eps, dtype, name="attn_norm")(x), allowed, positions)
    x = x + Mlp(c, name="mlp")(RMSNorm(c.norm_eps, dtype, name="mlp_norm")(x))
    return x, None


def positions_and_allowed(mask: Array) -> tuple[Array, Array]:
  """mask (B, L) -> (positions (B, L), allowed bool (B, L, L)): position =
  real tokens before this one; query q may see key s <= q when s is real."""
  mask = mask.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
  length = mask.shape[1]
  causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
  return positions, causal[None] & (mask[:, None, :] > 0)


class Llama(nn.Module):
  """ids/mask int (B, L) -> (logits float32 (B, L, V), {"hidden"}).

  `encode` gives the final-normed hidden states; `project` maps hidden
  states to logits over the whole vocabulary or over `token_ids` only (the
  labeler's three label tokens), without the full (B, L, V) product.
  """
  config: LlamaConfig

  def setup(self):
    c = self.config
    self.embed = nn.Embed(c.vocab_size, c.width,
                          embedding_init=_init(("vocab", "embed")))
    block = nn.remat(Block, prevent_cse=False) if c.remat else Block
    self.blocks = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast), length=c.depth,
        metadata_params={nn.PARTITION_NAME: "layers"})(c)
    self.final_norm = RMSNorm(c.norm_eps, jnp.dtype(c.dtype))
    if not c.tie_embeddings:
      self.lm_head = self.param("lm_head", _init(("embed", "vocab")),
                                (c.width, c.vocab_size))

  def encode(self, ids: Array, mask: Array) -> Array:
    """(B, L, D) final-normed hidden states, in the compute dtype."""
    positions, allowed = positions_and_allowed(mask)
    x = self.embed(ids).astype(jnp.dtype(self.config.dtype))
    x, _ = self.blocks(x, allowed, positions)
    return self.final_norm(x)

  def project(self, hidden: Array, token_ids: Array | None = None) -> Array:
    """float32 logits (..., V), or (..., len(token_ids)) for those tokens."""
    if self.config.tie_embeddings:
      table = self.embed.embedding  # (V, D)
    else:
      table = self.lm_head.T
    if token_ids is not None:
      table = table[token_ids]
    return jnp.einsum("...d,vd->...v", hidden, table.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)

  def next_token(self, ids: Array, mask: Array,
                 token_ids: Array | None = None) -> Array:
    """float32 (B, V) (or (B, len(token_ids))) logits of the token after
    the last column: every row's next token when rows are left-padded."""
    return self.project(self.encode(ids, mask)[:, -1], token_ids)

  def __call__(self, ids: Array, mask: Array) -> tuple[Array, dict]:
    hidden = self.encode(ids, mask)
    return self.project(hidden), {"hidden": hidden}


def init_boxed(config: LlamaConfig, rng: Array) -> Any:
  """Random params, boxed with their logical axis names."""
  ids = jnp.zeros((1, 4), jnp.int32)
  return Llama(config).init(rng, ids, jnp.ones_like(ids))["params"]


def abstract_boxed(config: LlamaConfig) -> Any:
  """Shapes and logical axes of the params, no FLOPs."""
  return jax.eval_shape(lambda r: init_boxed(config, r), jax.random.key(0))
