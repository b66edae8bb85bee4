"""Cross-encoder teachers: (query, product) -> 3 relevance labels.

  "text"        [CLS] query [SEP] product text [SEP] through a BERT encoder
                (MiniLM-L6 by default), [CLS] -> tanh pooler -> 3-way head:
                BertForSequenceClassification's architecture.
  "multimodal"  the ITM architecture: [ENC] query [SEP] product text [SEP]
                through the image-grounded text encoder (cross-attention to
                the product image's ViT tokens), position 0 -> the same head.

The inputs (the pair's tokens over the configured catalog fields; the
product image) are `inputs`'s. Params are a plain pytree
`{"txt", ["img"], "pooler", "classifier"}` with the project's logical axis
names, so `sharding.param_shardings` lays them on any mesh. A trained
teacher is a directory: `teacher.json` (config, provenance) +
`params.msgpack`; `load_teacher` gives a `Labeler`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax.convert import pretrained
from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.curation.labelers.cross_encoder import inputs as teacher_inputs
from dashclip_jax.curation.labelers.cross_encoder.config import TeacherConfig
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.model import tokenizer as tok
from dashclip_jax.train import sharding as shard_lib

log = logging.getLogger("dashclip_jax")

CONFIG_FILE, PARAMS_FILE = "teacher.json", "params.msgpack"


class CrossEncoder(nn.Module):
  """ids/mask int32 (B, L) [+ images float (B, S, S, 3)] -> logits (B, 3)."""
  config: TeacherConfig

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array,
               images: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    c = self.config
    dtype = jnp.dtype(c.dtype)
    image_tokens = None
    if c.kind == "multimodal":
      image_tokens = model_lib.VisionTransformer(c.vision, dtype=dtype,
                                                 name="img")(images)
      ids = ids.at[:, 0].set(tok.ENC_ID)  # BLIP's image-grounded mode.
    hidden = model_lib.TextEncoder(c.text, dtype=dtype, name="txt")(
        ids, mask, image_tokens, deterministic)
    dense = lambda n, axes, name: nn.Dense(
        n, kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), axes),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), axes[1:]), name=name)
    pooled = jnp.tanh(dense(c.text.width, ("embed", "proj"), "pooler")(
        hidden[:, 0].astype(jnp.float32)))
    pooled = nn.Dropout(c.text.dropout)(pooled, deterministic=deterministic)
    return dense(labeler_lib.NUM_LABELS, ("proj", None), "classifier")(pooled)


def example_inputs(config: TeacherConfig, batch: int = 1) -> dict:
  """Zero inputs of the module's shapes (init, eval_shape)."""
  out = {"ids": jnp.zeros((batch, config.max_length), jnp.int32),
         "mask": jnp.ones((batch, config.max_length), jnp.int32)}
  if config.kind == "multimodal":
    s = config.vision.image_size
    out["images"] = jnp.zeros((batch, s, s, 3), jnp.float32)
  return out


def init_boxed(config: TeacherConfig, rng: jax.Array) -> Any:
  """Random params, boxed with their logical axis names."""
  return CrossEncoder(config).init(rng, **example_inputs(config))["params"]


def abstract_boxed(config: TeacherConfig) -> Any:
  return jax.eval_shape(lambda r: init_boxed(config, r), jax.random.key(0))


# ---------------------------------------------------------------------------
# Starting weights.
# ---------------------------------------------------------------------------


def initial_params(kind: str, init: str, *, size: str, fields: Sequence[str],
                   max_length: int, query_max_length: int, image_size: int,
                   dropout: float, seed: int
                   ) -> tuple[TeacherConfig, dict, str]:
  """-> (config, numpy params, where the weights came from).

  init: "minilm" (MiniLM-L6 text encoder, the project's convert/pretrained.py
  path; ViT and cross-attention random), "" (all random at `size`), or a
  dashclip model directory (e.g. a stage-1 model: its `txt` and `img`).
  The pooler and the 3-way head always start random.
  """
  base = model_lib.model_config(size)
  if image_size:
    base = base.replace(vision=dataclasses.replace(base.vision,
                                                   image_size=image_size))
  if dropout >= 0:
    base = base.replace(text=dataclasses.replace(base.text, dropout=dropout))
  source, loaded = "random", {}
  if init == "minilm":
    base, params = pretrained.text_init("minilm", base, seed)
    loaded, source = {"txt": params["txt"], "img": params["img"]}, "minilm"
  elif init:
    model_dir = os.path.abspath(init)
    base, trees, _ = model_dir_lib.load_model_dir(model_dir)
    if image_size:
      base = base.replace(vision=dataclasses.replace(base.vision,
                                                     image_size=image_size))
    if dropout >= 0:
      base = base.replace(text=dataclasses.replace(base.text, dropout=dropout))
    loaded = {k: trees["params"][k] for k in ("txt", "img")}
    source = model_dir
  multimodal = kind == "multimodal"
  config = TeacherConfig(
      kind=kind, fields=tuple(fields), max_length=max_length,
      query_max_length=query_max_length,
      text=dataclasses.replace(base.text, cross_attention=multimodal),
      vision=base.vision if multimodal else None, dtype=base.dtype)
  if config.max_length > config.text.max_positions:
    raise ValueError(f"teacher max_length {max_length} exceeds the text "
                     f"encoder's {config.text.max_positions} positions")
  params = jax.tree.map(np.asarray, model_lib.unbox(
      init_boxed(config, jax.random.key(seed))))
  if "txt" in loaded:
    params["txt"] = _fit(params["txt"], loaded["txt"], "txt")
  if multimodal and "img" in loaded:
    params["img"] = _fit(params["img"], loaded["img"], "img")
  return config, params, source


def _fit(want: dict, got: dict, name: str) -> dict:
  """`got`'s arrays in `want`'s structure; subtrees `want` lacks (a text
  teacher's cross-attention) are dropped, and any shape mismatch raises."""
  out = {}
  for key, w in want.items():
    if key not in got:
      raise ValueError(f"teacher init: source has no {name}/{key}")
    if isinstance(w, dict):
      out[key] = _fit(w, got[key], f"{name}/{key}")
    elif np.shape(got[key]) != np.shape(w):
      raise ValueError(f"teacher init: {name}/{key} has shape "
                       f"{np.shape(got[key])}, the teacher needs {np.shape(w)}")
    else:
      out[key] = np.asarray(got[key], w.dtype)
  return out


# ---------------------------------------------------------------------------
# Saved teachers and the Labeler.
# ---------------------------------------------------------------------------


def save_teacher(directory: str, config: TeacherConfig, params: Any,
                 provenance: dict[str, Any]) -> str:
  """Writes the teacher directory (params first, teacher.json last and
  atomically: a directory with teacher.json is complete) -> teacher_id."""
  os.makedirs(directory, exist_ok=True)
  data = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray,
                                                           params))
  digest = hashlib.sha256(data).hexdigest()
  teacher_id = f"{config.kind}-{digest[:12]}"
  for name, payload in ((PARAMS_FILE, data), (CONFIG_FILE, json.dumps(
      {"teacher_id": teacher_id, "params_sha256": digest,
       "config": dataclasses.asdict(config),
       "provenance": provenance}, indent=2, default=str).encode())):
    tmp = os.path.join(directory, name + ".tmp")
    with open(tmp, "wb") as f:
      f.write(payload)
    os.replace(tmp, os.path.join(directory, name))
  return teacher_id


def read_teacher(directory: str) -> tuple[TeacherConfig, dict, dict]:
  """-> (config, numpy params, teacher.json contents)."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory} is not a teacher directory (no "
                            f"{CONFIG_FILE})")
  with open(path) as f:
    meta = json.load(f)
  config = TeacherConfig.from_dict(meta["config"])
  with open(os.path.join(directory, PARAMS_FILE), "rb") as f:
    params = flax.serialization.msgpack_restore(f.read())
  return config, jax.tree.map(np.asarray, params), meta


def local_mesh() -> jax.sharding.Mesh:
  """This process's devices on the batch axis: labelling is per process
  (each labels its own shards), so no collective spans processes."""
  return shard_lib.make_mesh([("data", -1)], jax.local_devices())


class Teacher:
  """A cross-encoder as a `Labeler`: batched, jitted, sharded inference.

  Batches of `batch_size` pairs (the last one padded, so one compile) are
  split over this process's devices; params are laid out by their logical
  axes on the same mesh.
  """

  def __init__(self, config: TeacherConfig, params: Any, teacher_id: str, *,
               batch_size: int = 64, mesh: jax.sharding.Mesh | None = None,
               tokenizer: tok.BlipTokenizer | None = None):
    self.config, self.teacher_id = config, teacher_id
    self.mesh = mesh or local_mesh()
    n = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    self.batch_size = -(-batch_size // n) * n  # A multiple of the devices.
    self.tokenizer = tokenizer or teacher_inputs.default_tokenizer()
    self.params = jax.device_put(params, shard_lib.param_shardings(
        abstract_boxed(config), self.mesh))
    self.failed_images: list[str] = []
    module = CrossEncoder(config)
    self._probs = jax.jit(
        lambda p, x: jax.nn.softmax(module.apply({"params": p}, **x), -1),
        out_shardings=shard_lib.replicated(self.mesh))

  def predict(self, queries: Sequence[str],
              products: Sequence[dict[str, Any]]) -> np.ndarray:
    """float32 (B, 3) label probabilities (see labeler.Labeler)."""
    inputs, failed = teacher_inputs.encode_pairs(
        self.config, self.tokenizer, queries, products)
    self.failed_images += failed
    return self.predict_inputs(inputs)

  def predict_inputs(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
    n, b = len(inputs["ids"]), self.batch_size
    out = []
    for start in range(0, n, b):
      chunk = {k: v[start:start + b] for k, v in inputs.items()}
      real = len(chunk["ids"])
      if real < b:
        chunk = {k: np.concatenate([v, np.repeat(v[-1:], b - real, 0)])
                 for k, v in chunk.items()}
      chunk = {k: jax.device_put(v, shard_lib.batch_sharding(self.mesh,
                                                             v.ndim))
               for k, v in chunk.items()}
      out.append(np.asarray(self._probs(self.params, chunk))[:real])
    if not out:
      return np.zeros((0, labeler_lib.NUM_LABELS), np.float32)
    return np.concatenate(out).astype(np.float32)


def load_teacher(directory: str, **kwargs) -> Teacher:
  config, params, meta = read_teacher(directory)
  return Teacher(config, params, meta["teacher_id"], **kwargs)
