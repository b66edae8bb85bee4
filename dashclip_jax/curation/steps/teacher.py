"""The teacher step: train on the seed, calibrate on held-out seed queries.

The trained teacher is `<workdir>/teacher` (or `config.teacher.checkpoint`,
then not trained); calibration.json holds its held-out agreement, the
threshold sweep and the chosen confidence threshold.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from dashclip_jax.curation import agreement as agreement_lib
from dashclip_jax.curation import seed as seed_lib
from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.curation.labelers.cross_encoder import inputs as teacher_inputs
from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib
from dashclip_jax.curation.labelers.cross_encoder import train as teacher_train
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import gpt_teacher
from dashclip_jax.data import images as images_lib
from dashclip_jax.runtime.config_files import ConfigError
from dashclip_jax.train import sharding as shard_lib

log = logging.getLogger("dashclip_jax")

THRESHOLDS = tuple(np.round(np.arange(0.34, 1.0, 0.01), 2).tolist())


def teacher_settings(ctx: context_lib.Context) -> dict:
  """What decides the trained teacher: a rerun with other values retrains
  (in a new workdir) rather than silently reusing."""
  t = ctx.config.teacher
  return {"kind": t.kind, "init": t.init, "size": t.size,
          "fields": list(ctx.fields), "max_length": t.max_length,
          "query_max_length": t.query_max_length,
          "image_size": t.image_size, "dropout": t.dropout,
          "steps": t.steps, "batch_size": t.batch_size, "lr": t.lr,
          "warmup_steps": t.warmup_steps, "weight_decay": t.weight_decay,
          "val_fraction": t.val_fraction, "seed": ctx.config.seed,
          "seed_sha256": seed_lib.digest(ctx.data.seed, ctx.catalog),
          **({"gpt": t.gpt.to_dict()} if t.kind == "gpt" else {})}


def initial_teacher(ctx: context_lib.Context, kind: str | None = None):
  """-> (TeacherConfig, numpy params, source) of the configured start."""
  t = ctx.config.teacher
  try:
    return teacher_lib.initial_params(
        kind or t.kind, t.init, size=t.size, fields=ctx.fields,
        max_length=t.max_length, query_max_length=t.query_max_length,
        image_size=t.image_size, dropout=t.dropout, seed=ctx.config.seed)
  except ValueError as e:
    raise ConfigError(f"config.teacher: {e}") from None


def teacher_step(ctx: context_lib.Context) -> dict:
  directory, want = ctx.teacher_dir, teacher_settings(ctx)
  meta_path = os.path.join(directory, teacher_lib.CONFIG_FILE)
  if ctx.config.teacher.checkpoint:
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f"config.teacher.checkpoint={directory}: no "
                              f"{teacher_lib.CONFIG_FILE} there")
    log.info("teacher: using %s (no training)", directory)
  elif os.path.isfile(meta_path):
    with open(meta_path) as f:
      have = json.load(f)["provenance"].get("settings", {})
    changed = sorted(k for k in want if have.get(k) != want[k])
    if changed:
      raise ConfigError(
          f"{directory} holds a teacher trained with other "
          f"{', '.join(changed)}; use another workdir or remove it")
    log.info("teacher: reusing %s", directory)
  else:
    train_teacher(ctx, directory, want)
  return calibrate(ctx)


def train_teacher(ctx: context_lib.Context, directory: str,
                  settings: dict) -> None:
  t = ctx.config.teacher
  if t.kind == "gpt":
    return gpt_teacher.train_gpt_teacher(ctx, directory, settings)
  config, params, source = initial_teacher(ctx)
  queries, products, labels = context_lib.pairs_of(ctx.teacher_train,
                                                   ctx.catalog)
  texts = [labeler_lib.product_text(p, config.fields) for p in products]
  ids, mask = teacher_inputs.pair_tokens(
      teacher_inputs.default_tokenizer(), queries, texts, config.max_length,
      config.query_max_length)
  images_of = None
  if config.kind == "multimodal":
    s = config.vision.image_size

    def images_of(rows):
      out = np.zeros((len(rows), s, s, 3), np.float32)
      for j, r in enumerate(rows):
        try:
          out[j] = teacher_inputs.cached_pixels(products[r], s)
        except images_lib.ImageError as e:
          log.warning("teacher: %s (fed as the mean image)", e)
      return out
  mesh = shard_lib.make_mesh([tuple(a) for a in ctx.config.mesh])
  log.info("teacher: %s from %s on mesh %s, %d pairs, %d steps of %d",
           config.kind, source, dict(mesh.shape), len(labels), t.steps,
           t.batch_size)
  trained, history = teacher_train.train(
      config, params, {"ids": ids, "mask": mask}, labels,
      teacher_train.TrainSettings(
          steps=t.steps, batch_size=t.batch_size, lr=t.lr,
          warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
          log_every=t.log_every, seed=ctx.config.seed,
          fast_compile=t.fast_compile),
      mesh, images_of)
  if jax.process_index() == 0:
    teacher_id = teacher_lib.save_teacher(directory, config, trained, {
        "init": source, "settings": settings, "history": history,
        "train_pairs": len(labels)})
    log.info("teacher: wrote %s (%s)", directory, teacher_id)
  context_lib.sync("teacher")


def calibrate(ctx: context_lib.Context) -> dict:
  """Agreement on held-out seed queries and the threshold it implies;
  written to calibration.json (+ the probabilities), reused while the
  teacher and the threshold settings stay the same."""
  teacher = context_lib.load_teacher(ctx)
  lc = ctx.config.label
  key = {"teacher_id": teacher.teacher_id, "threshold": lc.threshold,
         "target_accuracy": lc.target_accuracy,
         "validation_pairs": len(ctx.validation)}
  path = ctx.path("calibration.json")
  if os.path.isfile(path):
    with open(path) as f:
      have = json.load(f)
    if have.get("key") == key:
      return have
  queries, products, labels = context_lib.pairs_of(ctx.validation,
                                                   ctx.catalog)
  probs = teacher.predict(queries, products)
  sweep = agreement_lib.threshold_sweep(probs, labels, THRESHOLDS)
  if lc.threshold >= 0:
    value, by = float(lc.threshold), "config.label.threshold"
  else:
    value, by = agreement_lib.choose_threshold(sweep, lc.target_accuracy)
  out = {"key": key, "threshold": {"value": value, "chosen_by": by,
                                   "sweep": sweep},
         "validation": agreement_lib.agreement(
             probs, labels, ctx.config.report.num_bins)}
  m = out["validation"]
  log.info("teacher on %d held-out seed pairs: kappa %.4f, linear %.4f, "
           "accuracy %.4f, ECE %.4f; threshold %.2f (%s)", m["pairs"],
           m["kappa"], m["kappa_linear"], m["accuracy"], m["ece"], value, by)
  if jax.process_index() == 0:
    with open(path + ".tmp", "w") as f:
      json.dump(out, f, indent=2)
    os.replace(path + ".tmp", path)
    np.savez(ctx.path("calibration_probs.npz"), probs=probs, labels=labels)
  context_lib.sync("calibration")
  return out


def calibration(ctx: context_lib.Context) -> dict:
  """calibration.json as the teacher step wrote it."""
  path = ctx.path("calibration.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: run the teacher step first")
  with open(path) as f:
    return json.load(f)
