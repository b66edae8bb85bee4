"""Model FLOPs of the encoders and train steps, counted analytically.

Counts the matrix work a step runs (dense layers, the patch convolution,
attention scores and weighted sums, the similarity matrices), 2 FLOPs per
multiply-add; elementwise work (norms, softmax, GELU, dropout) is left out,
as is usual for MFU. A matmul whose output gets a gradient costs 3x its
forward (the forward, the input and the weight gradients), so a trained
tower costs 3x its forward, with these exceptions: the patch convolution
2x (pixels need no gradient), a frozen tower 1x and the trained projection
on top of it 2x (its input needs no gradient), and a similarity against
features without gradient (momentum features, queues) 2x.
Rematerialisation and GradCache's extra encoder forward (`accum_steps` > 1)
are not counted: MFU measures useful work. `tests/test_flops.py` checks
each forward count against the matmuls in the model's jaxpr, and each step
count against the matmuls of the traced train step (`accum_steps=1`).
"""

from dashclip_jax import model as model_lib


def _dense(tokens: int, d_in: int, d_out: int) -> int:
  return 2 * tokens * d_in * d_out


def _attention(q_len: int, kv_len: int, width: int) -> int:
  """Scores q.k and the probability-weighted sum of values."""
  return 2 * 2 * q_len * kv_len * width


def vision_tokens(v: model_lib.VisionConfig) -> int:
  return (v.image_size // v.patch_size) ** 2 + 1


def patch_embed(v: model_lib.VisionConfig) -> int:
  """The patch convolution of one image."""
  return _dense(vision_tokens(v) - 1, v.patch_size ** 2 * 3, v.width)


def image_forward(cfg: model_lib.ModelConfig) -> int:
  """ViT forward for one image, through vision_proj."""
  v = cfg.vision
  n = vision_tokens(v)
  per_block = (4 * _dense(n, v.width, v.width) + _attention(n, n, v.width)
               + 2 * _dense(n, v.width, v.mlp_dim))
  return (patch_embed(v) + v.depth * per_block
          + _dense(1, v.width, cfg.embed_dim))


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


def stage1_step(cfg: model_lib.ModelConfig, batch: int, text_len: int,
                momentum: bool = False, queue_size: int = 0) -> int:
  """ITC (image, text) + ITM, all trained (`train_steps.make_stage1_step`).

  ITM runs 3 image-grounded passes per example: the positive and the
  hard-negative text share the example's image, the third pass grounds the
  text on its hard-negative image. ITC's two directions are two (B, K)
  similarity matrices, K = B (+ queue_size); the hard negatives are drawn
  from one more (B, B) matrix, without gradient. With `momentum` (BLIP
  distillation) the momentum image and text encoders run forward once per
  example, ITC's columns are momentum features (no gradient) and their own
  two (B, K) similarities give the soft targets.
  """
  e = cfg.embed_dim
  unimodal = image_forward(cfg) + text_forward(cfg.text, text_len) + _dense(
      1, cfg.text.width, e)
  itm = (text_forward(cfg.text, text_len, cfg.vision, 2)
         + text_forward(cfg.text, text_len, cfg.vision)
         + 3 * _dense(1, cfg.text.width, 2))
  per_example = 3 * (unimodal + itm) - patch_embed(cfg.vision)
  if momentum:
    per_example += unimodal
  k = batch + (queue_size if momentum else 0)
  sim = _dense(batch, e, k)
  # Online x momentum columns: forward + the online side's gradient, and the
  # momentum similarities forward; else both sides get gradients.
  itc = 2 * (2 + 1) * sim if momentum else 2 * 3 * sim
  return batch * per_example + itc + _dense(batch, e, batch)


def stage2_step(cfg: model_lib.ModelConfig, batch: int, title_len: int,
                query_len: int, n_negatives: int,
                train_product_tower: bool = False,
                cached_features: bool = False) -> int:
  """QCC (`train_steps.make_stage2_step`): product tower (image +
  image-grounded title, then product_proj) and 1 + N queries per example.

  A frozen product tower body runs forward only, or not at all with
  `cached_features` (the batch carries its pooled features); product_proj
  is trained either way.
  """
  if cached_features and train_product_tower:
    raise ValueError("cached product features are for a frozen tower only")
  e = cfg.embed_dim
  body = (image_forward(cfg) - _dense(1, cfg.vision.width, e)
          + text_forward(cfg.text, title_len, cfg.vision))
  proj = _dense(1, cfg.text.width, e)
  if train_product_tower:
    product = 3 * (body + proj) - patch_embed(cfg.vision)
  else:
    product = (0 if cached_features else body) + 2 * proj
  query = text_forward(cfg.query, query_len) + _dense(1, cfg.query.width, e)
  logits = _dense(batch, e, batch) + batch * _dense(n_negatives, e, 1)
  return batch * (product + 3 * (1 + n_negatives) * query) + 3 * logits
