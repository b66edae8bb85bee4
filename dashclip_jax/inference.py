"""Inference API: `dashclip_jax.load(dir)` -> encoders that take images/str.

  model = dashclip_jax.load(checkpoint_dir)
  model.encode_image(images); model.encode_text(texts)
  model.encode_product(images, titles); model.encode_query(texts)
  model.itm_score(images, texts)
  model.encode_products_to_parquet(path, ids, images, titles)
  model.attach_index(export_dir); model.search(queries, k=10)

Images are uint8 HxWx3 arrays or PIL images of any size; texts are lists of
str. Outputs are numpy; embeddings are L2-normalised. Inputs are cut into
batches of `batch_size` (the encoder's, or a call's own) and the last one is
padded, so each function compiles once per batch size, not once per call.
Images are preprocessed batch by batch: a large catalog is never held as
pixels all at once. `show_progress=True` draws a tqdm bar over the batches.

The Parquet writers use the exported index's row layout (id, title or
text, embedding as fixed-size list<float32>; `dashclip_jax/index.py`), one
row group per batch; `search` ranks an export's products for query texts.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
import pyarrow.parquet as pq
from tqdm import auto as tqdm

from dashclip_jax import index as index_lib
from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.model import preprocess
from dashclip_jax.model import tokenizer as tok


def _check_batch_size(batch_size: int) -> int:
  if isinstance(batch_size, bool) or not isinstance(
      batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  return int(batch_size)


def _check_ids(ids: Sequence[Any], n: int, what: str) -> list[str]:
  """ids as str: one per row and unique (they key the Parquet table)."""
  if isinstance(ids, str):
    raise TypeError("ids must be a list of ids, not a single str")
  if len(ids) != n:
    raise ValueError(f"{len(ids)} ids for {n} {what}")
  ids = [str(i) for i in ids]
  repeated = [i for i, c in collections.Counter(ids).items() if c > 1]
  if repeated:
    raise ValueError(f"ids must be unique: {repeated[0]!r} appears "
                     f"{ids.count(repeated[0])} times ({len(repeated)} ids "
                     "repeated)")
  return ids


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
    self.batch_size = _check_batch_size(batch_size)
    self.index: index_lib.ExportedIndex | None = None  # attach_index
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
    _check_images(images)
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

  def _batches(self, fn: Callable, columns: Sequence[Sequence[Any]], *,
               raw_images: bool = False, batch_size: int | None = None,
               show_progress: bool = False, desc: str = ""
               ) -> Iterator[np.ndarray]:
    """fn's outputs batch by batch, padding rows cut off.

    columns: fn's inputs, one row each; with `raw_images` the first is raw
    images, preprocessed here one batch at a time.
    """
    n = len(columns[0])
    if any(len(c) != n for c in columns):
      raise ValueError(f"inputs differ in length: {[len(c) for c in columns]}")
    if raw_images:
      _check_images(columns[0])
    size = self.batch_size if batch_size is None else _check_batch_size(
        batch_size)
    with tqdm.tqdm(total=-(-n // size), desc=desc, unit="batch",
                   disable=not show_progress) as bar:
      for start in range(0, n, size):
        chunk = [c[start:start + size] for c in columns]
        if raw_images:
          chunk[0] = self.preprocess_images(chunk[0])
        real = len(chunk[0])
        pad = size - real  # One padded shape per batch size: compile once.
        if pad:
          chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)])
                   for c in chunk]
        yield np.asarray(fn({"params": self.params}, *chunk))[:real]
        bar.update()

  def _embedding_batches(self, kind: str, images, texts, **batching
                         ) -> Iterator[np.ndarray]:
    """Batches of one encoder's embeddings; kind = a public encoder's name."""
    if kind in ("encode_product", "itm_score") and len(images) != len(texts):
      raise ValueError(f"{len(images)} images but {len(texts)} "
                       f"{'titles' if kind == 'encode_product' else 'texts'}")
    fn = {"encode_image": self._image, "encode_text": self._text,
          "encode_query": self._query, "encode_product": self._product,
          "encode_product_text": self._product_text,
          "itm_score": self._itm}[kind]
    columns = [] if texts is None else list(self.tokenize(texts))
    if images is not None:
      columns.insert(0, images)
    return self._batches(fn, columns, raw_images=images is not None,
                         desc=kind, **batching)

  def _encode(self, kind: str, images, texts, batch_size: int | None,
              show_progress: bool) -> np.ndarray:
    """One public encoder's whole output: (B, E), or (B,) for itm_score."""
    row_shape = () if kind == "itm_score" else (self.config.embed_dim,)
    return _concatenate(self._embedding_batches(
        kind, images, texts, batch_size=batch_size,
        show_progress=show_progress), row_shape)

  # -- public API ----------------------------------------------------------
  # Every encoder takes batch_size (default: the encoder's; each new size
  # compiles once more) and show_progress (a tqdm bar over the batches).

  def encode_image(self, images, *, batch_size: int | None = None,
                   show_progress: bool = False) -> np.ndarray:
    """-> (B, E) float32, L2-normalised image embeddings (ITC space)."""
    return self._encode("encode_image", images, None, batch_size,
                        show_progress)

  def encode_text(self, texts: Sequence[str], *,
                  batch_size: int | None = None,
                  show_progress: bool = False) -> np.ndarray:
    """-> (B, E) unimodal text embeddings (ITC space)."""
    return self._encode("encode_text", None, texts, batch_size,
                        show_progress)

  def encode_product(self, images, titles: Sequence[str], *,
                     batch_size: int | None = None,
                     show_progress: bool = False) -> np.ndarray:
    """-> (B, E) multimodal product embeddings (DashCLIP's catalog side)."""
    return self._encode("encode_product", images, titles, batch_size,
                        show_progress)

  def encode_product_text(self, titles: Sequence[str], *,
                          batch_size: int | None = None,
                          show_progress: bool = False) -> np.ndarray:
    """-> (B, E) the product embedding from the title alone (no image)."""
    return self._encode("encode_product_text", None, titles, batch_size,
                        show_progress)

  def encode_query(self, texts: Sequence[str], *,
                   batch_size: int | None = None,
                   show_progress: bool = False) -> np.ndarray:
    """-> (B, E) query-tower embeddings (in the product space after stage 2)."""
    return self._encode("encode_query", None, texts, batch_size,
                        show_progress)

  def itm_score(self, images, texts: Sequence[str], *,
                batch_size: int | None = None,
                show_progress: bool = False) -> np.ndarray:
    """-> (B,) probability that image b matches text b (ITM head, [ENC])."""
    return self._encode("itm_score", images, texts, batch_size,
                        show_progress)

  # -- Parquet output ------------------------------------------------------

  def encode_products_to_parquet(
      self, path: str, ids: Sequence[Any], images, titles: Sequence[str], *,
      categories: Sequence[str] | None = None, batch_size: int | None = None,
      show_progress: bool = False) -> str:
    """Product embeddings straight to a Parquet file -> its path.

    Columns id, title, [category,] embedding: the layout of an export's
    product part, so `path` = `<dir>/products-00000-of-00001.parquet` then
    `index.finish_export(<dir>, 1)` makes a searchable export.
    images=None embeds the titles alone (`encode_product_text`).
    """
    kind = "encode_product_text" if images is None else "encode_product"
    extra = {} if categories is None else {"category": categories}
    return self._write_parquet(
        path, ids, "title", titles, extra, self._embedding_batches(
            kind, images, titles, batch_size=batch_size,
            show_progress=show_progress))

  def encode_queries_to_parquet(
      self, path: str, ids: Sequence[Any], texts: Sequence[str], *,
      batch_size: int | None = None, show_progress: bool = False) -> str:
    """Query embeddings to Parquet (id, text, embedding: an export's
    queries.parquet) -> its path."""
    return self._write_parquet(
        path, ids, "text", texts, {}, self._embedding_batches(
            "encode_query", None, texts, batch_size=batch_size,
            show_progress=show_progress))

  def _write_parquet(self, path: str, ids: Sequence[Any], text_name: str,
                     texts: Sequence[str], extra: dict[str, Sequence[str]],
                     batches: Iterator[np.ndarray]) -> str:
    """One row group per batch; only a batch's rows are held at a time."""
    ids = _check_ids(ids, len(texts), f"{text_name}s")
    for name, values in extra.items():
      if len(values) != len(ids):
        raise ValueError(f"{len(values)} {name} values for {len(ids)} ids")
    empty = np.zeros((0, self.config.embed_dim), np.float32)
    schema = index_lib.embedding_table(
        [], [], text_name, empty, {k: [] for k in extra}).schema
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"  # Renamed when complete: no torn files.
    try:
      with pq.ParquetWriter(partial, schema) as writer:
        start = 0
        for emb in batches:
          rows = slice(start, start + len(emb))
          writer.write_table(index_lib.embedding_table(
              ids[rows], texts[rows], text_name, emb,
              {k: v[rows] for k, v in extra.items()}))
          start = rows.stop
      os.replace(partial, path)
    finally:
      if os.path.exists(partial):
        os.remove(partial)
    return path

  # -- search over an embedding export -------------------------------------

  def attach_index(self, export: str | index_lib.ExportedIndex
                   ) -> DashClipEncoder:
    """Makes `export` (an export directory or a loaded one) the product
    index `search` uses by default -> self."""
    self.index = self._open_index(export)
    return self

  def search(self, queries: Sequence[str], k: int = 10, *,
             index: str | index_lib.ExportedIndex | None = None,
             batch_size: int | None = None, show_progress: bool = False
             ) -> list[list[index_lib.SearchHit]]:
    """Per query, the k best products of the index (the attached one, or
    `index`, loaded anew per call) for its query-tower embedding:
    [SearchHit(product_id, title, score)], best first. A query with no
    words (empty, whitespace) is a ValueError."""
    error = tok.search_query_error(queries)  # Before any index or encoding.
    if error:
      raise ValueError(error)
    target = self.index if index is None else self._open_index(index)
    if target is None:
      raise ValueError("no product index: pass index=EXPORT_DIR or call "
                       "attach_index(EXPORT_DIR) first")
    return target.search(self.encode_query(
        queries, batch_size=batch_size, show_progress=show_progress), k)

  def _open_index(self, export: str | index_lib.ExportedIndex
                  ) -> index_lib.ExportedIndex:
    if not isinstance(export, index_lib.ExportedIndex):
      if not os.path.isdir(export):
        raise FileNotFoundError(f"embedding export not found: {export}")
      export = index_lib.ExportedIndex(os.fspath(export))
    if export.index.d != self.config.embed_dim:
      raise ValueError(
          f"embedding export {export.export_dir} holds {export.index.d}-d "
          f"embeddings but this model's are {self.config.embed_dim}-d; "
          "export the catalog with this model")
    return export


def _concatenate(batches: Iterator[np.ndarray],
                 row_shape: tuple[int, ...]) -> np.ndarray:
  """The batches as one array; (0, *row_shape) for no input."""
  outputs = list(batches)
  if not outputs:
    return np.zeros((0, *row_shape), np.float32)
  return np.concatenate(outputs)


def _check_images(images: Sequence[Any]) -> None:
  if isinstance(images, np.ndarray) and images.ndim == 3:
    raise TypeError("pass a list of images (or a (B, H, W, 3) array), not "
                    "a single HxWx3 image")


def load(checkpoint_dir: str, *, batch_size: int = 32) -> DashClipEncoder:
  """Loads any model directory this project writes (converted or trained).

  A training workdir is accepted too: its latest exported model is used.
  """
  model_dir = model_dir_lib.resolve_model_dir(checkpoint_dir)
  config, trees, meta = model_dir_lib.load_model_dir(model_dir)
  pre = meta.get("preprocessing", {})
  vocab = os.path.join(model_dir, meta.get("tokenizer", {}).get(
      "vocab", model_dir_lib.VOCAB_FILE))
  return DashClipEncoder(
      config, trees["params"], tok.BlipTokenizer.from_vocab(vocab),
      image_size=pre.get("image_size"),
      text_max_length=pre.get("text_max_length", 35),
      caption_max_words=pre.get("caption_max_words", 30),
      batch_size=batch_size)
