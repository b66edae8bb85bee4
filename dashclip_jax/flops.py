"""Model FLOPs of the encoders and train steps, counted analytically.

Counts the matrix work a step needs (dense layers, the patch convolution,
attention scores and weighted sums), 2 FLOPs per multiply-add; elementwise
work (norms, softmax, GELU, dropout) is left out, as is usual for MFU.
Backward costs twice the forward, so a trained tower costs 3x its forward
and a frozen one 1x. Rematerialisation is not counted: MFU measures useful
work. `tests/test_flops.py` checks each forward count against the matmuls
in the model's jaxpr.
"""

from dashclip_jax import model as model_lib


def _dense(tokens: int, d_in: int, d_out: int) -> int:
  return 2 * tokens * d_in * d_out


def _attention(q_len: int, kv_len: int, width: int) -> int:
  """Scores q.k and the probability-weighted sum of values."""
  return 2 * 2 * q_len * kv_len * width


def vision_tokens(v: model_lib.VisionConfig) -> int:
  return (v.image_size // v.patch_size) ** 2 + 1


def image_forward(cfg: model_lib.ModelConfig) -> int:
  """ViT forward for one image, through vision_proj."""
  v = cfg.vision
  n = vision_tokens(v)
  patches = n - 1
  total = _dense(patches, v.patch_size ** 2 * 3, v.width)
  per_block = (4 * _dense(n, v.width, v.width) + _attention(n, n, v.width)
               + 2 * _dense(n, v.width, v.mlp_dim))
  return total + v.depth * per_block + _dense(1, v.width, cfg.embed_dim)


def text_forward(t: model_lib.TextConfig, length: int,
                 image: model_lib.VisionConfig | None = None,
                 texts_per_image: int = 1) -> int:
  """BERT forward for `texts_per_image` sequences; with `image`, every layer
  also cross-attends to one image's tokens (the image-grounded mode), whose
  keys and values are projected once for all its texts."""
  d, p = t.width, texts_per_image
  per_layer = p * (4 * _dense(length, d, d) + _attention(length, length, d)
                   + 2 * _dense(length, d, t.mlp_dim))
  if image is not None:
    n = vision_tokens(image)
    per_layer += (p * (2 * _dense(length, d, d) + _attention(length, n, d))
                  + 2 * _dense(n, image.width, d))
  return t.depth * per_layer


def stage1_step(cfg: model_lib.ModelConfig, batch: int, text_len: int) -> int:
  """ITC (image, text) + ITM, all trained; plus the global similarity
  matrix used by both. ITM runs 3 image-grounded passes per example: the
  positive and the hard-negative text share the example's image, the third
  pass grounds the text on its hard-negative image."""
  e = cfg.embed_dim
  per_example = (image_forward(cfg)
                 + text_forward(cfg.text, text_len)
                 + _dense(1, cfg.text.width, e)
                 + text_forward(cfg.text, text_len, cfg.vision, 2)
                 + text_forward(cfg.text, text_len, cfg.vision)
                 + 3 * _dense(1, cfg.text.width, 2))
  return 3 * (batch * per_example + _dense(batch, e, batch))


def stage2_step(cfg: model_lib.ModelConfig, batch: int, title_len: int,
                query_len: int, n_negatives: int,
                train_product_tower: bool = False) -> int:
  """QCC: product tower (image + image-grounded title) and 1 + N queries
  per example; the product tower counts 1x when frozen."""
  e = cfg.embed_dim
  product = (image_forward(cfg) - _dense(1, cfg.vision.width, e)
             + text_forward(cfg.text, title_len, cfg.vision)
             + _dense(1, cfg.text.width, e))
  query = text_forward(cfg.query, query_len) + _dense(1, cfg.query.width, e)
  logits = _dense(batch, e, batch) + batch * _dense(n_negatives, e, 1)
  product_mult = 3 if train_product_tower else 1
  return (batch * (product_mult * product + 3 * (1 + n_negatives) * query)
          + 3 * logits)
