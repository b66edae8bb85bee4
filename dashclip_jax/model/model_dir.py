"""The model checkpoint directory every part of the project reads and writes.

Layout of a model directory (written by `convert` and by the trainers):
  dashclip.json   model config, tokenizer, preprocessing, provenance
  vocab.txt       the tokenizer's vocab (so the directory is self-contained)
  params/         Orbax checkpoint of the parameter tree (plain arrays)
  momentum/       optional: BLIP momentum-encoder params; stage 1 starts
                  momentum distillation from them (trainers/stage1.py)
  queues/         optional: BLIP ITC feature queues, stored as (Q, E), with
                  queue_ptr (and idx_queue); stage 1 loads them when their
                  size is loss.queue_size
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dashclip_jax import model as model_lib
from dashclip_jax.model import preprocess
from dashclip_jax.model import tokenizer as tok
from dashclip_jax.runtime import manifests

METADATA_FILE = "dashclip.json"
VOCAB_FILE = "vocab.txt"
FORMAT_VERSION = 1


def default_preprocessing(image_size: int) -> dict[str, Any]:
  return dict(image_size=image_size, resize="bicubic_square",
              mean=list(preprocess.MEAN), std=list(preprocess.STD),
              text_max_length=35, caption_max_words=30)


def _to_numpy(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def _this_process_only() -> ocp.options.MultiprocessingOptions:
  # Model dirs hold host numpy trees, written by one process (the trainers'
  # process 0, or a conversion) and read by each process on its own: no
  # cross-process barriers, which would wait for processes that never come.
  this = jax.process_index()
  return ocp.options.MultiprocessingOptions(
      primary_host=this, active_processes={this},
      barrier_sync_key_prefix=f"model_dir_p{this}")


def _save_tree(path: str, tree) -> None:
  with ocp.StandardCheckpointer(
      multiprocessing_options=_this_process_only()) as ckptr:
    ckptr.save(os.path.abspath(path), _to_numpy(tree))


def _restore_tree(path: str):
  with ocp.StandardCheckpointer(
      multiprocessing_options=_this_process_only()) as ckptr:
    tree = ckptr.restore(os.path.abspath(path))
  return jax.tree_util.tree_map(np.asarray, tree)


def save_model_dir(directory: str, params, config: model_lib.ModelConfig, *,
                   momentum=None, queues=None, vocab_file: str | None = None,
                   preprocessing: dict[str, Any] | None = None,
                   provenance: dict[str, Any] | None = None) -> str:
  """Writes a self-contained model directory; refuses to overwrite one."""
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, METADATA_FILE)):
    raise FileExistsError(f"{directory} already holds a dashclip checkpoint")
  os.makedirs(directory, exist_ok=True)
  # dashclip.json goes last (atomically): a crash midway never leaves a
  # directory that looks complete.
  _save_tree(os.path.join(directory, "params"), model_lib.unbox(params))
  if momentum is not None:
    _save_tree(os.path.join(directory, "momentum"), momentum)
  if queues is not None:
    _save_tree(os.path.join(directory, "queues"), queues)
  shutil.copyfile(vocab_file or tok.packaged_vocab_file(),
                  os.path.join(directory, VOCAB_FILE))
  meta = dict(
      format_version=FORMAT_VERSION,
      model_config=config.to_dict(),
      tokenizer=dict(type="blip_bert_uncased", vocab=VOCAB_FILE),
      preprocessing=preprocessing or default_preprocessing(
          config.vision.image_size),
      provenance=provenance or {},
      items=sorted(n for n, t in (("params", params), ("momentum", momentum),
                                  ("queues", queues)) if t is not None))
  tmp = os.path.join(directory, METADATA_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2, default=str)
  os.replace(tmp, os.path.join(directory, METADATA_FILE))
  return directory


def read_metadata(directory: str) -> dict[str, Any]:
  return manifests.read(
      directory, METADATA_FILE, "format_version", FORMAT_VERSION,
      "not a dashclip model directory; convert a BLIP checkpoint with "
      "`python -m dashclip_jax.convert` or point at a training workdir's "
      "exported model")


def load_model_dir(directory: str, items: tuple[str, ...] = ("params",)
                   ) -> tuple[model_lib.ModelConfig, dict[str, Any],
                              dict[str, Any]]:
  """-> (model config, {item: tree}, metadata) from a model directory."""
  meta = read_metadata(directory)
  config = model_lib.ModelConfig.from_dict(meta["model_config"])
  trees = {}
  for item in items:
    path = os.path.join(directory, item)
    if item not in meta.get("items", []) or not os.path.isdir(path):
      continue
    trees[item] = _restore_tree(path)
  if "params" in items and "params" not in trees:
    raise FileNotFoundError(f"{directory} has no params/ item")
  return config, trees, meta


def resolve_model_dir(path: str) -> str:
  """A model dir itself, or the newest trained `<path>/models/<step>` (step
  > 0) of a training workdir."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint directory not found: {path}")
  if os.path.isfile(os.path.join(path, METADATA_FILE)):
    return path
  exported = os.path.join(path, "models")
  if os.path.isdir(exported):
    steps = sorted((int(d) for d in os.listdir(exported) if d.isdigit() and
                    os.path.isfile(os.path.join(
                        exported, d, METADATA_FILE))))
    if steps and steps[-1] > 0:
      return os.path.join(exported, str(steps[-1]))
    if steps:
      # models/0 is a run's untrained start (kept as the evaluation's "init"
      # reference): never what a workdir stands for.
      raise FileNotFoundError(
          f"{path} holds only its untrained start ({exported}/0): its "
          "training has not finished; rerun it, or name models/0 explicitly")
  raise FileNotFoundError(
      f"{path} holds no dashclip model ({METADATA_FILE} not "
      "found, nor a training workdir with models/<step>/)")
