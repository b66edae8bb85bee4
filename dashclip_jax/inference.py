"""Inference API: `dashclip_jax.load(dir)` -> encoders that take images/str.

  model = dashclip_jax.load(checkpoint_dir)
  model.encode_image(images); model.encode_text(texts)
  model.encode_product(images, titles); model.encode_query(texts)
  model.itm_score(images, texts)

Images are uint8 HxWx3 arrays or PIL images of any size; texts are lists of
str. Outputs are numpy; embeddings are L2-normalised. Inputs are cut into
batches of `batch_size` and the last one is padded, so each function compiles
once per padded shape (one batch shape here), not once per call.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from dashclip_jax import checkpoint_io
from dashclip_jax import model as model_lib
from dashclip_jax import preprocess
from dashclip_jax import tokenizer as tok


class DashClipEncoder:
  """Host-side wrapper: preprocessing, tokenising, batching, jitted encoders."""

  def __init__(self, config: model_lib.ModelConfig, params,
               tokenizer: tok.BlipTokenizer, *, image_size: int | None = None,
               text_max_length: int = 35, caption_max_words: int = 30,
               batch_size: int = 32):
    self.config = config
    self.params = jax.device_put(params)
    self.tokenizer = tokenizer
    self.image_size = image_size or config.vision.image_size
    self.text_max_length = min(text_max_length, config.text.max_positions,
                               config.query.max_positions)
    self.caption_max_words = caption_max_words
    self.batch_size = batch_size
    self.module = model_lib.DashClip(config)
    apply = lambda method: jax.jit(functools.partial(
        self.module.apply, method=method))
    self._image = apply(lambda mdl, x: mdl.encode_image(x)[0])
    self._text = apply(lambda mdl, i, k: mdl.encode_text(i, k)[0])
    self._query = apply(lambda mdl, i, k: mdl.encode_query(i, k)[0])
    self._product = apply(lambda mdl, x, i, k: mdl.encode_product(x, i, k)[0])
    self._product_text = apply(
        lambda mdl, i, k: mdl.encode_product_text(i, k)[0])
    self._itm = apply(lambda mdl, x, i, k: jax.nn.softmax(
        mdl.itm_logits(i, k, mdl.img(x))[0], axis=-1)[:, 1])

  # -- host-side preprocessing ---------------------------------------------

  def preprocess_images(self, images: Sequence[Any]) -> np.ndarray:
    """-> float32 (B, S, S, 3), BLIP's eval transform."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
      raise TypeError("pass a list of images (or a (B, H, W, 3) array), not "
                      "a single HxWx3 image")
    return np.stack([preprocess.eval_transform(im, self.image_size)
                     for im in images]) if len(images) else np.zeros(
                         (0, self.image_size, self.image_size, 3), np.float32)

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(texts, str):
      raise TypeError("texts must be a list of str, not a single str")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
      raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, "
                      "not str")
    cleaned = [tok.pre_caption(t, self.caption_max_words) for t in texts]
    return self.tokenizer(cleaned, self.text_max_length)

  # -- batching ------------------------------------------------------------

  def _run(self, fn: Callable, *arrays: np.ndarray) -> np.ndarray:
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
      raise ValueError(f"inputs differ in length: {[len(a) for a in arrays]}")
    outputs = []
    for start in range(0, n, self.batch_size):
      chunk = [a[start:start + self.batch_size] for a in arrays]
      real = len(chunk[0])
      pad = self.batch_size - real  # One padded shape: compile once.
      if pad:
        chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) for c in chunk]
      out = fn({"params": self.params}, *chunk)
      outputs.append(np.asarray(out)[:real])
    if not outputs:
      return np.zeros((0, self.config.embed_dim), np.float32)
    return np.concatenate(outputs)

  # -- public API ----------------------------------------------------------

  def encode_image(self, images) -> np.ndarray:
    """-> (B, E) float32, L2-normalised image embeddings (ITC space)."""
    return self._run(self._image, self.preprocess_images(images))

  def encode_text(self, texts: Sequence[str]) -> np.ndarray:
    """-> (B, E) unimodal text embeddings (ITC space)."""
    return self._run(self._text, *self.tokenize(texts))

  def encode_product(self, images, titles: Sequence[str]) -> np.ndarray:
    """-> (B, E) multimodal product embeddings (DashCLIP's catalog side)."""
    if len(images) != len(titles):
      raise ValueError(f"{len(images)} images but {len(titles)} titles")
    return self._run(self._product, self.preprocess_images(images),
                     *self.tokenize(titles))

  def encode_product_text(self, titles: Sequence[str]) -> np.ndarray:
    """-> (B, E) the product embedding from the title alone (no image)."""
    return self._run(self._product_text, *self.tokenize(titles))

  def encode_query(self, texts: Sequence[str]) -> np.ndarray:
    """-> (B, E) query-tower embeddings (in the product space after stage 2)."""
    return self._run(self._query, *self.tokenize(texts))

  def itm_score(self, images, texts: Sequence[str]) -> np.ndarray:
    """-> (B,) probability that image b matches text b (ITM head, [ENC])."""
    if len(images) != len(texts):
      raise ValueError(f"{len(images)} images but {len(texts)} texts")
    return self._run(self._itm, self.preprocess_images(images),
                     *self.tokenize(texts))


def load(checkpoint_dir: str, *, batch_size: int = 32) -> DashClipEncoder:
  """Loads any model directory this project writes (converted or trained).

  A training workdir is accepted too: its latest exported model is used.
  """
  model_dir = resolve_model_dir(checkpoint_dir)
  config, trees, meta = checkpoint_io.load_model_dir(model_dir)
  pre = meta.get("preprocessing", {})
  vocab = os.path.join(model_dir, meta.get("tokenizer", {}).get(
      "vocab", checkpoint_io.VOCAB_FILE))
  return DashClipEncoder(
      config, trees["params"], tok.BlipTokenizer.from_vocab(vocab),
      image_size=pre.get("image_size"),
      text_max_length=pre.get("text_max_length", 35),
      caption_max_words=pre.get("caption_max_words", 30),
      batch_size=batch_size)


def resolve_model_dir(path: str) -> str:
  """A model dir itself, or the newest trained `<path>/models/<step>` (step
  > 0) of a training workdir."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint directory not found: {path}")
  if os.path.isfile(os.path.join(path, checkpoint_io.METADATA_FILE)):
    return path
  exported = os.path.join(path, "models")
  if os.path.isdir(exported):
    steps = sorted((int(d) for d in os.listdir(exported) if d.isdigit() and
                    os.path.isfile(os.path.join(
                        exported, d, checkpoint_io.METADATA_FILE))))
    if steps and steps[-1] > 0:
      return os.path.join(exported, str(steps[-1]))
    if steps:
      # models/0 is a run's untrained start (kept as the evaluation's "init"
      # reference): never what a workdir stands for.
      raise FileNotFoundError(
          f"{path} holds only its untrained start ({exported}/0): its "
          "training has not finished; rerun it, or name models/0 explicitly")
  raise FileNotFoundError(
      f"{path} holds no dashclip model ({checkpoint_io.METADATA_FILE} not "
      "found, nor a training workdir with models/<step>/)")
