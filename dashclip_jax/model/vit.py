"""ViT image encoder (pre-LN blocks, final LN), BLIP_REFERENCE §1.1."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dashclip_jax.model import attention as attention_lib
from dashclip_jax.model import config as model_cfg
from dashclip_jax.model import layers

Array = jax.Array


def interpolate_pos_embed(pos_embed: Array, grid: tuple[int, int]) -> Array:
  """Resizes a (1, 1+s*s, W) ViT position table to a (h, w) patch grid.

  Keeps the cls row, resizes the s x s grid with PyTorch's bicubic
  (a = -0.75, align_corners=False, no antialiasing), as BLIP and HF do.
  """
  n_patches = pos_embed.shape[1] - 1
  side = int(round(n_patches ** 0.5))
  if side * side != n_patches:
    raise ValueError(f"pos_embed has {n_patches} patch rows, not a square grid")
  if (side, side) == tuple(grid):
    return pos_embed
  width = pos_embed.shape[-1]
  patch_pos = pos_embed[0, 1:].reshape(side, side, width).astype(jnp.float32)
  patch_pos = jax.image.resize(
      patch_pos, (grid[0], grid[1], width),
      method=jax.image.ResizeMethod.CUBIC_PYTORCH, antialias=False)
  patch_pos = patch_pos.reshape(1, grid[0] * grid[1], width)
  return jnp.concatenate(
      [pos_embed[:, :1], patch_pos.astype(pos_embed.dtype)], axis=1)


class ViTBlock(nn.Module):
  config: model_cfg.VisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.layer_norm(c.ln_eps, name="norm1", **kw)(x)
    x = x + attention_lib.Attention(c.heads, c.width,
                                    implementation=self.attention,
                                    name="attn", **kw)(h, h, None)
    h = layers.layer_norm(c.ln_eps, name="norm2", **kw)(x)
    return x + layers.Mlp(c.mlp_dim, c.width, name="mlp", **kw)(h)


class VisionTransformer(layers.Tower):
  """images float (B, H, W, 3) normalised -> tokens (B, 1+N, W) after the final LN."""
  config: model_cfg.VisionConfig

  @nn.compact
  def __call__(self, images: Array) -> Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = c.patch_size
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be (B, H, W, 3), got {images.shape}")
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(
          f"image size {images.shape[1:3]} is not a multiple of patch {p}")
    x = nn.Conv(c.width, (p, p), strides=(p, p), padding="VALID",
                kernel_init=layers.normal((None, None, None, "embed")),
                bias_init=layers.zeros(("embed",)), name="patch_embed",
                **kw)(images.astype(self.dtype))
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, c.width)  # Row-major patch order, as torch.
    cls = self.param("cls_token", layers.normal((None, None, "embed")),
                     (1, 1, c.width), self.param_dtype)
    side = c.image_size // p
    pos = self.param("pos_embed", layers.normal((None, "pos", "embed")),
                     (1, 1 + side * side, c.width), self.param_dtype)
    pos = interpolate_pos_embed(pos, (gh, gw))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.width)).astype(x.dtype),
                         x], axis=1)
    x = x + pos.astype(x.dtype)
    if self.scan_layers and not self.is_initializing():
      block = ViTBlock(c, attention=self.attention, parent=None, **kw)
      x = layers.run_scanned_layers(
          self, "block", c.depth, self.remat,
          lambda p, x, rngs: block.apply({"params": p}, x), x, None)
    else:
      block = nn.remat(ViTBlock) if self.remat else ViTBlock
      for i in range(c.depth):
        x = block(c, attention=self.attention, name=f"block_{i}", **kw)(x)
    return layers.layer_norm(c.ln_eps, name="norm", **kw)(x)
