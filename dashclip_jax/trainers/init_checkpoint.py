"""Where a run's weights start: the mesh, the model geometry and init params.

An init checkpoint (`config.init.checkpoint`: a model dir or a training
workdir) sets both the geometry and the weights; else `config.model.size`
sets the geometry and `config.init.text_from` (convert/pretrained.py) may supply the
text and query towers.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import ml_collections
import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax.convert import pretrained
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.runtime import config_files
from dashclip_jax.train import sharding as shard_lib

log = logging.getLogger("dashclip_jax")


class InitCheckpointError(FileNotFoundError):
  """The configured init checkpoint does not exist or is not a model."""


def mesh_and_init(config: ml_collections.ConfigDict, stage: str):
  """-> (mesh, init model dir or None, model config, init params or None).

  The mesh from `config.mesh` (the global batch must split over it); the
  model geometry and weights from `config.init.checkpoint` when set, else
  the text and query towers from `config.init.text_from` (convert/pretrained.py)
  when set.
  """
  tc = config.train
  mesh = shard_lib.make_mesh([tuple(a) for a in config.mesh])
  shard_lib.check_batch_divisible(tc.batch_size, mesh)
  log.info("%s: mesh %s, global batch %d, %d steps", stage, dict(mesh.shape),
           tc.batch_size, tc.total_steps)
  init_dir = (resolve_init_checkpoint(config.init.checkpoint)
              if config.init.checkpoint else None)
  model_config = model_config_from(config.model, init_dir)
  init_params = (load_init_params(init_dir, model_config) if init_dir
                 else None)
  text_from = config.init.text_from
  if text_from and init_dir:
    log.info("%s: init.text_from=%r ignored: init.checkpoint is set", stage,
             text_from)
  elif text_from:
    # Pretrained text/query towers; their geometry replaces the size's.
    model_config, init_params = pretrained.text_init(text_from, model_config,
                                                     config.seed)
  return mesh, init_dir, model_config, init_params


def resolve_init_checkpoint(path: str) -> str:
  """A model dir (converted or exported) or a training workdir -> model dir."""
  try:
    return model_dir_lib.resolve_model_dir(path)
  except FileNotFoundError as e:
    raise InitCheckpointError(f"init checkpoint {path!r}: {e}") from None


def model_config_from(cfg: ml_collections.ConfigDict,
                      init_dir: str | None) -> model_lib.ModelConfig:
  """The init checkpoint's geometry when there is one, else `cfg.size`.

  Numerics and compilation (dtype, remat, attention, scan_layers,
  dropout) always come from the experiment config.
  """
  if init_dir:
    meta = model_dir_lib.read_metadata(init_dir)
    mc = model_lib.ModelConfig.from_dict(meta["model_config"])
  else:
    try:
      mc = model_lib.model_config(cfg.size)
    except ValueError as e:
      raise config_files.ConfigError(f"model.size: {e}") from None
  mc = mc.replace(dtype=cfg.dtype, remat=cfg.remat, attention=cfg.attention,
                  scan_layers=cfg.scan_layers)
  if cfg.image_size:
    mc = mc.replace(vision=dataclasses.replace(mc.vision,
                                               image_size=cfg.image_size))
  if cfg.text_dropout >= 0:
    mc = mc.replace(
        text=dataclasses.replace(mc.text, dropout=cfg.text_dropout),
        query=dataclasses.replace(mc.query, dropout=cfg.text_dropout))
  return mc


def load_init_params(init_dir: str, model_config: model_lib.ModelConfig):
  """Params of a model dir, checked against the model's shapes."""
  _, trees, _ = model_dir_lib.load_model_dir(init_dir)
  params = trees["params"]
  expected = model_lib.abstract_params(model_config)
  flat_exp = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  name = lambda p: "/".join(str(getattr(k, "key", k)) for k in p)
  missing = sorted(name(p) for p in flat_exp if p not in flat_got)
  if missing:
    raise ValueError(f"init checkpoint {init_dir} lacks params: {missing[:5]}")
  for path, want in flat_exp.items():
    got = flat_got[path]
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f"init checkpoint {init_dir}: {name(path)} has shape "
                       f"{tuple(got.shape)}, the model needs "
                       f"{tuple(want.shape)}")
  return jax.tree.map(lambda g, w: np.asarray(g, w.dtype), params, expected)


def init_name(config: ml_collections.ConfigDict, init_dir: str | None
              ) -> str:
  """Where a run's weights started, for logs and provenance."""
  if init_dir:
    return init_dir
  text_from = config.init.text_from
  return f"text towers from {text_from}, rest random" if text_from \
      else "random"


def copy_text_to_query(params, model_config: model_lib.ModelConfig):
  """Query tower <- text encoder (no cross-attention) and query_proj <-
  product_proj, when the geometries match (DashCLIP's query initialisation).

  product_proj, not text_proj: stage 2 matches queries to product
  embeddings, so the query side starts as the product side's text path
  (from a BLIP conversion both equal text_proj; after a MiniLM init both
  are the identity, and text_proj is stage 1's ITC head).
  """
  if (model_config.query.width, model_config.query.depth) != (
      model_config.text.width, model_config.text.depth):
    log.warning("query and text towers differ in shape: query tower kept")
    return params
  query = jax.tree.map(np.array, params["txt"])  # A copy: popped below.
  for layer in query.values():
    if isinstance(layer, dict):
      layer.pop("cross_attn", None)
      layer.pop("cross_attn_norm", None)
  if jax.tree.structure(query) != jax.tree.structure(params["query"]):
    log.warning("query tower layout differs from the text encoder's: kept")
    return params
  return {**params, "query": query,
          "query_proj": jax.tree.map(np.array, params["product_proj"])}
