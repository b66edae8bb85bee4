"""The conversion itself: source tensors -> a full DashClip param tree and a
report of what was used, ignored, left unfilled and derived; `convert` also
reads the source and writes the model directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from flax import traverse_util
import jax
import numpy as np

from dashclip_jax.convert.errors import ConversionError
from dashclip_jax.convert.errors import UsageError
from dashclip_jax.convert import fit
from dashclip_jax.convert import geometry
from dashclip_jax.convert import rename
from dashclip_jax.convert import sources
from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.model import tokenizer as tok

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ConversionReport:
  layout: str
  config: model_lib.ModelConfig
  params: dict
  momentum: dict | None
  queues: dict | None
  unused: list[str]
  ignored: list[str]
  unfilled: list[str]
  derived: list[str]
  notes: list[str]

  def summary(self) -> dict[str, Any]:
    return dict(layout=self.layout, unused_source_tensors=self.unused,
                ignored_source_tensors=len(self.ignored),
                unfilled_params=self.unfilled, derived_params=self.derived,
                notes=self.notes)


def _name(path: tuple[str, ...]) -> str:
  return "/".join(path)


# DashCLIP parts BLIP lacks, initialised from BLIP's text side.
_DERIVED = [
    (("product_proj",), ("text_proj",)),
    (("query_proj",), ("text_proj",)),
    (("query",), ("txt",)),
]


def convert_tensors(tensors: dict[str, np.ndarray], hf_config: dict | None,
                    *, base: model_lib.ModelConfig | None = None,
                    overrides: dict[str, Any] | None = None,
                    bert_into: tuple[str, ...] = ("txt", "query"),
                    seed: int = 0) -> ConversionReport:
  """Maps source tensors onto a DashClip param tree (see the package doc)."""
  layout = rename.detect_layout(tensors)
  base = base or model_lib.model_config("base")
  config = geometry.infer_geometry(tensors, hf_config, layout, base,
                                   bert_into, overrides)
  notes: list[str] = []
  mapped, momentum_mapped, queues, used, ignored = rename.map_source(
      tensors, layout, config, bert_into, notes)
  if any(n.startswith("text_decoder.") for n in ignored):
    log.info("ignoring the BLIP text decoder (%d tensors): out of scope",
             sum(n.startswith("text_decoder.") for n in ignored))

  # Target shapes (and random values for whatever the source lacks).
  init = model_lib.unbox(model_lib.init_params(config, jax.random.key(seed)))
  flat_init = {k: np.asarray(v)
               for k, v in traverse_util.flatten_dict(init).items()}
  rng = np.random.default_rng(seed)
  flat: dict[tuple[str, ...], np.ndarray] = {}
  for path, array in mapped.items():
    if path not in flat_init:
      raise ConversionError(f"source maps to unknown parameter {_name(path)}")
    flat[path] = fit.fit_shape(path, array, flat_init[path].shape, notes, rng)

  derived = []
  for dst_prefix, src_prefix in _DERIVED:
    for path, value in flat_init.items():
      if path[:len(dst_prefix)] != dst_prefix or path in flat:
        continue
      src = src_prefix + path[len(dst_prefix):]
      if src in flat and flat[src].shape == value.shape:
        flat[path] = flat[src].copy()
        derived.append(_name(path))
  if derived:
    notes.append(f"initialised {len(derived)} DashCLIP params from BLIP's "
                 "text side (query tower <- text encoder, product/query "
                 "projections <- text_proj)")
  if ("vision_proj", "kernel") in flat and ("vision_proj", "bias") not in flat:
    for head in ("vision_proj", "text_proj"):
      flat[(head, "bias")] = np.zeros_like(flat_init[(head, "bias")])
      derived.append(f"{head}/bias")
    notes.append("bias-free source projections: biases set to zero")
  if ("temp",) not in flat:
    flat[("temp",)] = np.asarray(config.temp_init, np.float32)
    derived.append("temp")
    notes.append(f"source has no temperature: temp = {config.temp_init}")

  unfilled = sorted(_name(p) for p in flat_init if p not in flat)
  for path in flat_init:
    flat.setdefault(path, flat_init[path])
  params = traverse_util.unflatten_dict(
      {p: np.asarray(v, flat_init[p].dtype) for p, v in flat.items()})

  momentum = None
  if momentum_mapped:
    momentum_flat = {}
    for path, array in momentum_mapped.items():
      if path not in flat_init:
        raise ConversionError(
            f"momentum source maps to unknown parameter {_name(path)}")
      momentum_flat[path] = fit.fit_shape(
          path, array, flat_init[path].shape, notes,
          rng).astype(flat_init[path].dtype)
    momentum = traverse_util.unflatten_dict(momentum_flat)
  unused = sorted(set(tensors) - used - ignored)
  for name in unused:
    log.warning("unused source tensor: %s %s", name, tensors[name].shape)
  for name in unfilled:
    log.warning("parameter not in the source (random init): %s", name)
  return ConversionReport(layout, config, params, momentum, queues or None,
                          unused, sorted(ignored), unfilled, sorted(derived),
                          notes)


def convert(source: str, output: str, *, size: str = "base",
            overrides: dict[str, Any] | None = None,
            bert_into: tuple[str, ...] = ("txt", "query"),
            vocab_file: str | None = None, seed: int = 0
            ) -> ConversionReport:
  """Reads `source`, converts, writes a model directory at `output`."""
  try:
    base = model_lib.model_config(size)
  except ValueError as e:  # Unknown size: before reading a large source.
    raise UsageError(f"--size: {e}") from None
  tensors, hf_config = sources.read_source(source)
  try:
    report = convert_tensors(tensors, hf_config, base=base,
                             overrides=overrides, bert_into=bert_into,
                             seed=seed)
  except ConversionError as e:
    raise ConversionError(f"{source}: {e}") from None
  if report.config.text.vocab_size != tok.VOCAB_SIZE:
    report.notes.append(
        f"text vocab is {report.config.text.vocab_size}, not BLIP's "
        f"{tok.VOCAB_SIZE}: [DEC]/[ENC] ids may be out of range")
  model_dir_lib.save_model_dir(
      output, report.params, report.config, momentum=report.momentum,
      queues=report.queues, vocab_file=vocab_file,
      provenance=dict(source=os.path.abspath(source), **report.summary()))
  for note in report.notes:
    log.info(note)
  log.info("wrote %s (layout %s; %d unused source tensors, %d unfilled "
           "params)", output, report.layout, len(report.unused),
           len(report.unfilled))
  return report
