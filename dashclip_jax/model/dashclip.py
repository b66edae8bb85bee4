"""DashClip: BLIP's image and text towers plus DashCLIP's query tower,
projections, ITM head and temperature, as one Linen module.

Every `encode_*` / `*_features` / `itm_logits` method returns
`(out, aux)`: the result, and a dict of intermediates ("tokens", "hidden")
that callers may reuse (e.g. image tokens for the image-grounded text).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dashclip_jax.model import bert
from dashclip_jax.model import config as model_cfg
from dashclip_jax.model import layers
from dashclip_jax.model import tokenizer as tok
from dashclip_jax.model import vit

Array = jax.Array
Aux = dict[str, Array]


def _text_embedding(encoder: nn.Module, proj: nn.Module, pooling: str,
                    ids: Array, mask: Array, deterministic: bool
                    ) -> tuple[Array, Aux]:
  """A text-only tower's embedding: encode (no image), pool, project,
  L2-normalise; the text and query towers differ only in these parts."""
  hidden = encoder(ids, mask, None, deterministic)
  pooled = layers.pool(hidden, mask, pooling)
  return layers.l2_normalize(proj(pooled)), {"hidden": hidden}


class DashClip(nn.Module):
  """BLIP image/text towers plus DashCLIP's product and query heads.

  Inputs: images float (B, H, W, 3) normalised NHWC; ids/mask int32 (B, L).
  Embeddings returned by `encode_*` are float32 (B, E), L2-normalised.
  """
  config: model_cfg.ModelConfig

  def setup(self):
    c = self.config
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
    towers = dict(remat=c.remat, attention=c.attention,
                  scan_layers=c.scan_layers, **kw)
    self.img = vit.VisionTransformer(c.vision, **towers)
    self.txt = bert.TextEncoder(c.text, **towers)
    self.query = bert.TextEncoder(
        dataclasses.replace(c.query, cross_attention=False), **towers)
    # Projections run in float32: they are tiny and feed the losses.
    proj = functools.partial(layers.dense, c.embed_dim, "embed", "proj",
                             jnp.float32, kw["param_dtype"])
    self.vision_proj = proj("vision_proj")
    self.text_proj = proj("text_proj")
    self.product_proj = proj("product_proj")
    self.query_proj = proj("query_proj")
    self.itm_head = layers.dense(2, "embed", None, jnp.float32,
                                 kw["param_dtype"], "itm_head")
    self.temp = self.param(
        "temp", nn.with_logical_partitioning(
            nn.initializers.constant(c.temp_init), ()), (), jnp.float32)

  def encode_image(self, images: Array) -> tuple[Array, Aux]:
    tokens = self.img(images)
    emb = layers.l2_normalize(
        self.vision_proj(tokens[:, 0].astype(jnp.float32)))
    return emb, {"tokens": tokens}

  def encode_text(self, ids: Array, mask: Array, deterministic: bool = True
                  ) -> tuple[Array, Aux]:
    return _text_embedding(self.txt, self.text_proj, self.config.text_pooling,
                           ids, mask, deterministic)

  def encode_multimodal(self, ids: Array, mask: Array, image_tokens: Array,
                        deterministic: bool = True,
                        use_enc_token: bool = True) -> tuple[Array, Aux]:
    """Image-grounded text encoder -> (hidden (B, L, D), {}).

    `image_tokens` (B/p, 1+N, Wv): p consecutive texts per image (p=1 is
    one image per text). BLIP overwrites position 0 with [ENC] for this
    mode; `use_enc_token=False` keeps [CLS], as HF's
    BlipForImageTextRetrieval does.
    """
    if use_enc_token:
      ids = jnp.asarray(ids).at[:, 0].set(tok.ENC_ID)
    return self.txt(ids, mask, image_tokens, deterministic), {}

  def itm_logits(self, ids: Array, mask: Array, image_tokens: Array,
                 deterministic: bool = True, use_enc_token: bool = True
                 ) -> tuple[Array, Aux]:
    """(B, 2) image-text matching logits (class 1 = match), {"hidden"}."""
    hidden, _ = self.encode_multimodal(ids, mask, image_tokens, deterministic,
                                       use_enc_token)
    return self.itm_head(hidden[:, 0].astype(jnp.float32)), {"hidden": hidden}

  def product_features_from_tokens(self, image_tokens: Array, ids: Array,
                                   mask: Array, deterministic: bool = True
                                   ) -> tuple[Array, Aux]:
    """float32 (B, D) pooled image-grounded state: the product embedding
    before `project_product` (what a frozen product tower caches)."""
    hidden, _ = self.encode_multimodal(ids, mask, image_tokens, deterministic)
    pooled = layers.pool(hidden, mask, self.config.product_pooling)
    return pooled, {"hidden": hidden}

  def product_features(self, images: Array, ids: Array, mask: Array,
                       deterministic: bool = True) -> tuple[Array, Aux]:
    tokens = self.img(images)
    feats, aux = self.product_features_from_tokens(tokens, ids, mask,
                                                   deterministic)
    return feats, {**aux, "tokens": tokens}

  def project_product(self, features: Array) -> Array:
    """(B, D) product features -> (B, E) L2-normalised product embedding."""
    return layers.l2_normalize(
        self.product_proj(features.astype(jnp.float32)))

  def encode_product_text(self, ids: Array, mask: Array
                          ) -> tuple[Array, Aux]:
    """The product embedding without the image: the same text encoder,
    [ENC], pooling and product_proj, its cross-attention sublayers skipped
    (the evaluation's measure of what the image adds)."""
    ids = jnp.asarray(ids).at[:, 0].set(tok.ENC_ID)
    hidden = self.txt(ids, mask, None, True)
    pooled = layers.pool(hidden, mask, self.config.product_pooling)
    return self.project_product(pooled), {"hidden": hidden}

  def encode_product_from_tokens(self, image_tokens: Array, ids: Array,
                                 mask: Array, deterministic: bool = True
                                 ) -> tuple[Array, Aux]:
    feats, aux = self.product_features_from_tokens(image_tokens, ids, mask,
                                                   deterministic)
    return self.project_product(feats), aux

  def encode_product(self, images: Array, ids: Array, mask: Array,
                     deterministic: bool = True) -> tuple[Array, Aux]:
    """Multimodal product embedding: projection of the pooled image-grounded
    state ([ENC] or mean, `config.product_pooling`)."""
    feats, aux = self.product_features(images, ids, mask, deterministic)
    return self.project_product(feats), aux

  def encode_query(self, ids: Array, mask: Array, deterministic: bool = True
                   ) -> tuple[Array, Aux]:
    return _text_embedding(self.query, self.query_proj,
                           self.config.query_pooling, ids, mask, deterministic)

  def __call__(self, images: Array, ids: Array, mask: Array,
               query_ids: Array | None = None,
               query_mask: Array | None = None,
               deterministic: bool = True) -> dict[str, Array]:
    """Runs every head once (used by `init`)."""
    image_emb, aux = self.encode_image(images)
    text_emb, _ = self.encode_text(ids, mask, deterministic)
    product_emb, _ = self.encode_product_from_tokens(aux["tokens"], ids, mask,
                                                     deterministic)
    itm, _ = self.itm_logits(ids, mask, aux["tokens"], deterministic)
    if query_ids is None:
      query_ids, query_mask = ids, mask
    query_emb, _ = self.encode_query(query_ids, query_mask, deterministic)
    return dict(image=image_emb, text=text_emb, product=product_emb,
                query=query_emb, itm=itm, temp=self.temp)
