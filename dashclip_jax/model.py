"""BLIP encoders and DashCLIP heads in Flax Linen.

Towers (top-level param names are public API; regexes select them):
  img           ViT image encoder (pre-LN, final LN), BLIP_REFERENCE §1.1.
  txt           BERT "MED" text encoder (post-LN) with a cross-attention
                sublayer per layer: unimodal ([CLS], no cross-attention) or
                image-grounded ([ENC] + cross-attention to image tokens).
  query         text-only BERT query tower (DashCLIP), its own weights.
  vision_proj, text_proj, product_proj, query_proj   Dense -> E, L2-normalised.
  itm_head      Dense -> 2 on the image-grounded position-0 state (1 = match).
  temp          learned ITC temperature (BLIP init 0.07; clamped in the loss).

Every parameter carries logical axis names ("embed", "mlp", "heads", "kv",
"vocab", "pos", "proj") so `sharding.py` can map them onto a mesh. The model
sets no activation shardings of its own: the train steps pin the batch dims
of the towers' inputs and outputs to the mesh's batch axes
(`train_steps._constrain_batch`), and XLA propagates them in between.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dashclip_jax import tokenizer as tok

Array = jax.Array

ATTENTION_IMPLEMENTATIONS = ("einsum", "cudnn")

# BLIP initialises its new weights (cross-attention, heads) with N(0, 0.02).
_INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  ln_eps: float = 1e-6


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = tok.VOCAB_SIZE
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  max_positions: int = 512
  ln_eps: float = 1e-12
  dropout: float = 0.1
  cross_attention: bool = True


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Geometry and numerics of the whole model (recorded in checkpoints)."""
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  query: TextConfig = TextConfig(cross_attention=False)
  embed_dim: int = 256
  temp_init: float = 0.07
  query_pooling: str = "cls"  # "cls" or "mean" (e.g. for a MiniLM query tower).
  # Product embedding from the image-grounded text states: "enc" (BLIP's
  # [ENC] position 0) or "mean" (masked mean over the title's positions,
  # how MiniLM-style sentence encoders pool).
  product_pooling: str = "enc"
  # Unimodal text embedding (stage 1's ITC): "cls" (BLIP) or "mean".
  text_pooling: str = "cls"
  dtype: str = "float32"  # Compute dtype.
  param_dtype: str = "float32"
  remat: bool = False
  # Run each tower's layers as one jax.lax.scan over their (stacked)
  # params: the same function, compiled once per tower instead of once per
  # layer (base stage 1: 12+12 unrolled layers take minutes to compile).
  # Params keep their per-layer names; dropout draws differ from unrolled.
  scan_layers: bool = False
  # "einsum": attention as einsums + float32 softmax (any mask, dropout on
  # the probs). "cudnn": jax.nn.dot_product_attention for the calls that
  # have no key mask and no active probs dropout (the ViT; the image-grounded
  # text at eval), through cuDNN's fused (flash) kernel on GPU and XLA on
  # other backends (same function, so a model trained with it runs
  # anywhere); other calls keep the einsum path. Experimental: bench/mfu.py
  # has yet to time it on a GPU.
  attention: str = "einsum"

  def __post_init__(self):
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"Unknown attention {self.attention!r}; choose from "
                       f"{ATTENTION_IMPLEMENTATIONS}")
    for name, value, known in (("query_pooling", self.query_pooling,
                                ("cls", "mean")),
                               ("product_pooling", self.product_pooling,
                                ("enc", "mean")),
                               ("text_pooling", self.text_pooling,
                                ("cls", "mean"))):
      if value not in known:
        raise ValueError(f"Unknown {name} {value!r}; choose from {known}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"Unknown model config keys: {sorted(unknown)}")
    for key, sub in (("vision", VisionConfig), ("text", TextConfig),
                     ("query", TextConfig)):
      if key in d and isinstance(d[key], dict):
        d[key] = sub(**d[key])
    return cls(**d)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


def _tiny_text(cross: bool) -> TextConfig:
  return TextConfig(width=32, depth=2, heads=2, mlp_dim=64, max_positions=64,
                    cross_attention=cross)


def _small_text(cross: bool) -> TextConfig:
  return TextConfig(width=256, depth=4, heads=4, mlp_dim=1024,
                    max_positions=128, cross_attention=cross)


_SIZES = {
    # CI scale: compiles in seconds on 2 CPU cores.
    "tiny": ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=32, depth=2,
                            heads=2, mlp_dim=64),
        text=_tiny_text(True), query=_tiny_text(False), embed_dim=16),
    # Laptop scale for the demo and the CPU benchmarks.
    "small": ModelConfig(
        vision=VisionConfig(image_size=128, patch_size=16, width=256, depth=4,
                            heads=4, mlp_dim=1024),
        text=_small_text(True), query=_small_text(False), embed_dim=128),
    # BLIP-14M: ViT-B/16 at 224 px, BERT-base, 256-d embeddings.
    "base": ModelConfig(),
}


def model_config(size: str = "tiny", **overrides) -> ModelConfig:
  """Named model geometry ("tiny", "small", "base") with field overrides."""
  if size not in _SIZES:
    raise ValueError(f"Unknown model size {size!r}; choose from {sorted(_SIZES)}")
  return _SIZES[size].replace(**overrides)


# ---------------------------------------------------------------------------
# Building blocks.
# ---------------------------------------------------------------------------


def _normal(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(
      nn.initializers.normal(stddev=_INIT_STD), axes)


def _zeros(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def _dense(features: int, in_axis: str, out_axis: str, dtype, param_dtype,
           name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=_normal((in_axis, out_axis)),
                  bias_init=_zeros((out_axis,)), name=name)


def _layer_norm(eps: float, dtype, param_dtype, name: str) -> nn.LayerNorm:
  # use_fast_variance=False: E[(x-mean)^2] as torch does (parity ~1e-7).
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, scale_init=_ones(("embed",)),
                      bias_init=_zeros(("embed",)), name=name)


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
        kernel_init=_normal(("embed", "heads", "kv")),
        bias_init=_zeros(("heads", "kv")))
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
        kernel_init=_normal(("heads", "kv", "embed")),
        bias_init=_zeros(("embed",)), name="out")(out)


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


class Mlp(nn.Module):
  hidden: int
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = _dense(self.hidden, "embed", "mlp", self.dtype, self.param_dtype,
               "fc1")(x)
    x = gelu(x)
    return _dense(self.width, "mlp", "embed", self.dtype, self.param_dtype,
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


# ---------------------------------------------------------------------------
# Image encoder.
# ---------------------------------------------------------------------------


class ViTBlock(nn.Module):
  config: VisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _layer_norm(c.ln_eps, name="norm1", **kw)(x)
    x = x + Attention(c.heads, c.width, implementation=self.attention,
                      name="attn", **kw)(h, h, None)
    h = _layer_norm(c.ln_eps, name="norm2", **kw)(x)
    return x + Mlp(c.mlp_dim, c.width, name="mlp", **kw)(h)


class VisionTransformer(nn.Module):
  """images float (B, H, W, 3) normalised -> tokens (B, 1+N, W) after the final LN."""
  config: VisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False
  attention: str = "einsum"
  scan_layers: bool = False

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
                kernel_init=_normal((None, None, None, "embed")),
                bias_init=_zeros(("embed",)), name="patch_embed",
                **kw)(images.astype(self.dtype))
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, c.width)  # Row-major patch order, as torch.
    cls = self.param("cls_token", _normal((None, None, "embed")),
                     (1, 1, c.width), self.param_dtype)
    side = c.image_size // p
    pos = self.param("pos_embed", _normal((None, "pos", "embed")),
                     (1, 1 + side * side, c.width), self.param_dtype)
    pos = interpolate_pos_embed(pos, (gh, gw))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.width)).astype(x.dtype),
                         x], axis=1)
    x = x + pos.astype(x.dtype)
    if self.scan_layers and not self.is_initializing():
      block = ViTBlock(c, attention=self.attention, parent=None, **kw)
      x = run_scanned_layers(
          self, "block", c.depth, self.remat,
          lambda p, x, rngs: block.apply({"params": p}, x), x, None)
    else:
      block = nn.remat(ViTBlock) if self.remat else ViTBlock
      for i in range(c.depth):
        x = block(c, attention=self.attention, name=f"block_{i}", **kw)(x)
    return _layer_norm(c.ln_eps, name="norm", **kw)(x)


# ---------------------------------------------------------------------------
# Text encoder (BERT / MED).
# ---------------------------------------------------------------------------


class TextLayer(nn.Module):
  """Post-LN BERT layer with an optional cross-attention sublayer."""
  config: TextConfig
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
    attn = functools.partial(Attention, c.heads, c.width, c.dropout,
                             self.deterministic, implementation=self.attention,
                             **kw)
    h = attn(name="self_attn")(x, x, mask)
    x = _layer_norm(c.ln_eps, name="self_attn_norm", **kw)(x + drop(h))
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
      x = _layer_norm(c.ln_eps, name="cross_attn_norm", **kw)(x + drop(h))
    h = Mlp(c.mlp_dim, c.width, name="mlp", **kw)(x)
    return _layer_norm(c.ln_eps, name="mlp_norm", **kw)(x + drop(h))


class TextEncoder(nn.Module):
  """ids/mask int (B, L) [+ image tokens (B/p, 1+N, Wv)] -> hidden (B, L, D).

  With image tokens for B/p images, texts b*p .. b*p+p-1 are grounded on
  image b (p texts per image, each image projected once per layer).
  """
  config: TextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False
  attention: str = "einsum"
  scan_layers: bool = False

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
    words = nn.Embed(c.vocab_size, c.width, embedding_init=_normal(
        ("vocab", "embed")), name="word_embed", **kw)(ids)
    pos_table = self.param("pos_embed", _normal(("pos", "embed")),
                           (c.max_positions, c.width), self.param_dtype)
    x = words + pos_table[None, :length].astype(words.dtype)
    x = _layer_norm(c.ln_eps, name="embed_norm", **kw)(x)
    x = nn.Dropout(c.dropout)(x, deterministic=deterministic)
    if image_tokens is not None:
      image_tokens = image_tokens.astype(x.dtype)
    if self.scan_layers and not self.is_initializing():
      layer = TextLayer(c, deterministic, attention=self.attention,
                        parent=None, **kw)
      uses_dropout = not deterministic and c.dropout > 0
      x = run_scanned_layers(
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


# ---------------------------------------------------------------------------
# The whole model.
# ---------------------------------------------------------------------------


class DashClip(nn.Module):
  """BLIP image/text towers plus DashCLIP's product and query heads.

  Inputs: images float (B, H, W, 3) normalised NHWC; ids/mask int32 (B, L).
  Embeddings returned by `encode_*` are float32 (B, E), L2-normalised.
  """
  config: ModelConfig

  def setup(self):
    c = self.config
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
    towers = dict(remat=c.remat, attention=c.attention,
                  scan_layers=c.scan_layers, **kw)
    self.img = VisionTransformer(c.vision, **towers)
    self.txt = TextEncoder(c.text, **towers)
    self.query = TextEncoder(
        dataclasses.replace(c.query, cross_attention=False), **towers)
    # Projections run in float32: they are tiny and feed the losses.
    proj = functools.partial(_dense, c.embed_dim, "embed", "proj", jnp.float32,
                             kw["param_dtype"])
    self.vision_proj = proj("vision_proj")
    self.text_proj = proj("text_proj")
    self.product_proj = proj("product_proj")
    self.query_proj = proj("query_proj")
    self.itm_head = _dense(2, "embed", None, jnp.float32, kw["param_dtype"],
                           "itm_head")
    self.temp = self.param(
        "temp", nn.with_logical_partitioning(
            nn.initializers.constant(c.temp_init), ()), (), jnp.float32)

  def encode_image(self, images: Array) -> tuple[Array, dict[str, Array]]:
    tokens = self.img(images)
    emb = l2_normalize(self.vision_proj(tokens[:, 0].astype(jnp.float32)))
    return emb, {"tokens": tokens}

  def encode_text(self, ids: Array, mask: Array, deterministic: bool = True
                  ) -> tuple[Array, dict[str, Array]]:
    hidden = self.txt(ids, mask, None, deterministic)
    pooled = (masked_mean(hidden, mask) if self.config.text_pooling == "mean"
              else hidden[:, 0].astype(jnp.float32))
    emb = l2_normalize(self.text_proj(pooled))
    return emb, {"hidden": hidden}

  def encode_multimodal(self, ids: Array, mask: Array, image_tokens: Array,
                        deterministic: bool = True,
                        use_enc_token: bool = True) -> Array:
    """Image-grounded text encoder -> hidden (B, L, D).

    `image_tokens` (B/p, 1+N, Wv): p consecutive texts per image (p=1 is
    one image per text). BLIP overwrites position 0 with [ENC] for this
    mode; `use_enc_token=False` keeps [CLS], as HF's
    BlipForImageTextRetrieval does.
    """
    if use_enc_token:
      ids = jnp.asarray(ids).at[:, 0].set(tok.ENC_ID)
    return self.txt(ids, mask, image_tokens, deterministic)

  def itm_logits(self, ids: Array, mask: Array, image_tokens: Array,
                 deterministic: bool = True, use_enc_token: bool = True
                 ) -> Array:
    """(B, 2) image-text matching logits; class 1 = match."""
    hidden = self.encode_multimodal(ids, mask, image_tokens, deterministic,
                                    use_enc_token)
    return self.itm_head(hidden[:, 0].astype(jnp.float32))

  def product_features_from_tokens(self, image_tokens: Array, ids: Array,
                                   mask: Array, deterministic: bool = True
                                   ) -> tuple[Array, dict[str, Array]]:
    """float32 (B, D) pooled image-grounded state: the product embedding
    before `project_product` (what a frozen product tower caches)."""
    hidden = self.encode_multimodal(ids, mask, image_tokens, deterministic)
    if self.config.product_pooling == "mean":
      pooled = masked_mean(hidden, mask)
    else:
      pooled = hidden[:, 0].astype(jnp.float32)
    return pooled, {"hidden": hidden}

  def product_features(self, images: Array, ids: Array, mask: Array,
                       deterministic: bool = True
                       ) -> tuple[Array, dict[str, Array]]:
    tokens = self.img(images)
    feats, aux = self.product_features_from_tokens(tokens, ids, mask,
                                                   deterministic)
    return feats, {**aux, "tokens": tokens}

  def project_product(self, features: Array) -> Array:
    """(B, D) product features -> (B, E) L2-normalised product embedding."""
    return l2_normalize(self.product_proj(features.astype(jnp.float32)))

  def encode_product_text(self, ids: Array, mask: Array
                          ) -> tuple[Array, dict[str, Array]]:
    """The product embedding without the image: the same text encoder,
    [ENC], pooling and product_proj, its cross-attention sublayers skipped
    (the evaluation's measure of what the image adds)."""
    ids = jnp.asarray(ids).at[:, 0].set(tok.ENC_ID)
    hidden = self.txt(ids, mask, None, True)
    if self.config.product_pooling == "mean":
      pooled = masked_mean(hidden, mask)
    else:
      pooled = hidden[:, 0].astype(jnp.float32)
    return self.project_product(pooled), {"hidden": hidden}

  def encode_product_from_tokens(self, image_tokens: Array, ids: Array,
                                 mask: Array, deterministic: bool = True
                                 ) -> tuple[Array, dict[str, Array]]:
    feats, aux = self.product_features_from_tokens(image_tokens, ids, mask,
                                                   deterministic)
    return self.project_product(feats), aux

  def encode_product(self, images: Array, ids: Array, mask: Array,
                     deterministic: bool = True
                     ) -> tuple[Array, dict[str, Array]]:
    """Multimodal product embedding: projection of the pooled image-grounded
    state ([ENC] or mean, `config.product_pooling`)."""
    feats, aux = self.product_features(images, ids, mask, deterministic)
    return self.project_product(feats), aux

  def encode_query(self, ids: Array, mask: Array, deterministic: bool = True
                   ) -> tuple[Array, dict[str, Array]]:
    hidden = self.query(ids, mask, None, deterministic)
    if self.config.query_pooling == "mean":
      pooled = masked_mean(hidden, mask)
    else:
      pooled = hidden[:, 0].astype(jnp.float32)
    return l2_normalize(self.query_proj(pooled)), {"hidden": hidden}

  def __call__(self, images: Array, ids: Array, mask: Array,
               query_ids: Array | None = None,
               query_mask: Array | None = None,
               deterministic: bool = True) -> dict[str, Array]:
    """Runs every head once (used by `init`)."""
    image_emb, aux = self.encode_image(images)
    text_emb, _ = self.encode_text(ids, mask, deterministic)
    product_emb, _ = self.encode_product_from_tokens(aux["tokens"], ids, mask,
                                                     deterministic)
    itm = self.itm_logits(ids, mask, aux["tokens"], deterministic)
    if query_ids is None:
      query_ids, query_mask = ids, mask
    query_emb, _ = self.encode_query(query_ids, query_mask, deterministic)
    return dict(image=image_emb, text=text_emb, product=product_emb,
                query=query_emb, itm=itm, temp=self.temp)


def init_params(config: ModelConfig, rng: Array, text_length: int = 8
                ) -> dict[str, Any]:
  """Random params (boxed with logical axis names) for `config`."""
  s = config.vision.image_size
  images = jnp.zeros((1, s, s, 3), jnp.float32)
  ids = jnp.zeros((1, text_length), jnp.int32)
  variables = DashClip(config).init(rng, images, ids, jnp.ones_like(ids))
  return variables["params"]


def abstract_params(config: ModelConfig) -> dict[str, Any]:
  """Shapes and dtypes of the (unboxed) params of `config`, no FLOPs."""
  return jax.eval_shape(lambda r: unbox(init_params(config, r)),
                        jax.random.key(0))


def unbox(params):
  """Strips flax's logical-partitioning boxes -> plain arrays."""
  return nn.meta.unbox(params)


def logical_axes(config: ModelConfig, text_length: int = 8):
  """Pytree of logical PartitionSpecs, computed from shapes only (no FLOPs)."""
  abstract = jax.eval_shape(lambda r: init_params(config, r, text_length),
                            jax.random.key(0))
  return nn.get_partition_spec(abstract)
