"""BERT "MED" text encoder (post-LN) with a cross-attention sublayer per
layer: unimodal (no image tokens) or image-grounded (cross-attention to
image tokens). BLIP's `txt` tower and DashCLIP's text-only `query` tower."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dashclip_jax.model import attention as attention_lib
from dashclip_jax.model import config as model_cfg
from dashclip_jax.model import layers

Array = jax.Array


class TextLayer(nn.Module):
  """Post-LN BERT layer with an optional cross-attention sublayer."""
  config: model_cfg.TextConfig
  deterministic: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, x: Array, mask: Array,
               image_tokens: Array | None) -> Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    drop = functools.partial(nn.Dropout(c.dropout),
                             deterministic=self.deterministic)
    attn = functools.partial(attention_lib.Attention, c.heads, c.width,
                             c.dropout, self.deterministic,
                             implementation=self.attention, **kw)
    h = attn(name="self_attn")(x, x, mask)
    x = layers.layer_norm(c.ln_eps, name="self_attn_norm", **kw)(x + drop(h))
    if image_tokens is not None:
      # Keys/values: all 1+N image tokens (cls included); image mask is ones.
      # Texts b*p .. b*p+p-1 share image b: their queries attend as one
      # sequence of p*L (queries never see each other here, so this equals
      # p separate passes), and the image's keys/values are projected once.
      n_img = image_tokens.shape[0]
      b, length, width = x.shape
      h = attn(name="cross_attn")(
          x.reshape(n_img, (b // n_img) * length, width), image_tokens, None)
      h = h.reshape(b, length, width)
      x = layers.layer_norm(c.ln_eps, name="cross_attn_norm", **kw)(
          x + drop(h))
    h = layers.Mlp(c.mlp_dim, c.width, name="mlp", **kw)(x)
    return layers.layer_norm(c.ln_eps, name="mlp_norm", **kw)(x + drop(h))


class TextEncoder(layers.Tower):
  """ids/mask int (B, L) [+ image tokens (B/p, 1+N, Wv)] -> hidden (B, L, D).

  With image tokens for B/p images, texts b*p .. b*p+p-1 are grounded on
  image b (p texts per image, each image projected once per layer).
  """
  config: model_cfg.TextConfig

  @nn.compact
  def __call__(self, ids: Array, mask: Array, image_tokens: Array | None = None,
               deterministic: bool = True) -> Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if image_tokens is not None and not c.cross_attention:
      raise ValueError("this text encoder has no cross-attention")
    if image_tokens is not None and ids.shape[0] % image_tokens.shape[0]:
      raise ValueError(
          f"{ids.shape[0]} texts for {image_tokens.shape[0]} images: need a "
          "whole number of texts per image")
    length = ids.shape[1]
    if length > c.max_positions:
      raise ValueError(
          f"text length {length} exceeds max_positions {c.max_positions}")
    words = nn.Embed(c.vocab_size, c.width, embedding_init=layers.normal(
        ("vocab", "embed")), name="word_embed", **kw)(ids)
    pos_table = self.param("pos_embed", layers.normal(("pos", "embed")),
                           (c.max_positions, c.width), self.param_dtype)
    x = words + pos_table[None, :length].astype(words.dtype)
    x = layers.layer_norm(c.ln_eps, name="embed_norm", **kw)(x)
    x = nn.Dropout(c.dropout)(x, deterministic=deterministic)
    if image_tokens is not None:
      image_tokens = image_tokens.astype(x.dtype)
    if self.scan_layers and not self.is_initializing():
      layer = TextLayer(c, deterministic, attention=self.attention,
                        parent=None, **kw)
      uses_dropout = not deterministic and c.dropout > 0
      x = layers.run_scanned_layers(
          self, "layer", c.depth, self.remat,
          lambda p, x, rngs: layer.apply({"params": p}, x, mask, image_tokens,
                                         rngs=rngs), x,
          self.make_rng("dropout") if uses_dropout else None)
    else:
      layer = nn.remat(TextLayer) if self.remat else TextLayer
      for i in range(c.depth):
        x = layer(c, deterministic, attention=self.attention,
                  name=f"layer_{i}", **kw)(x, mask, image_tokens)
    return x
