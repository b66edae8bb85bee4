"""The export in order: read the model dir, check what HF can hold, write
blip/, query/, the product files, the model card and the manifest into
`<output>.partial`, then move it to `output` (a failed export leaves
nothing at `output`)."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
from transformers.utils import logging as hf_logging

from dashclip_jax.export_hf import blip
from dashclip_jax.export_hf import card
from dashclip_jax.export_hf import checks
from dashclip_jax.export_hf.errors import ExportError
from dashclip_jax.export_hf import hf_tokenizer
from dashclip_jax.export_hf import product
from dashclip_jax.export_hf import query
from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib

MANIFEST = "export_hf.json"  # The report; marks a directory as an export.
_VERSIONS = ("torch", "transformers", "sentence-transformers", "tokenizers")


def _read_model_dir(model_dir: str
                    ) -> tuple[str, dict[str, Any], model_lib.ModelConfig]:
  try:
    resolved = model_dir_lib.resolve_model_dir(model_dir)
    meta = model_dir_lib.read_metadata(resolved)
    config = model_lib.ModelConfig.from_dict(meta["model_config"])
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise ExportError(f"{model_dir}: not a dashclip model directory or "
                      f"training workdir: {e}") from None
  return os.path.abspath(resolved), meta, config


def _inside(path: str, root: str) -> bool:
  path, root = os.path.realpath(path), os.path.realpath(root)
  return os.path.commonpath([path, root]) == root


def _check_output(output: str, model_dir: str, overwrite: bool) -> None:
  if _inside(output, model_dir) or _inside(model_dir, output):
    raise ExportError(f"output {output} and the model directory {model_dir} "
                      "overlap: write the export elsewhere")
  if os.path.isfile(output):
    raise ExportError(f"output {output} is a file")
  if not os.path.isdir(output) or not os.listdir(output):
    return
  if not overwrite:
    raise ExportError(f"output {output} exists and is not empty; pass "
                      "--overwrite to replace it")
  if not os.path.isfile(os.path.join(output, MANIFEST)):
    raise ExportError(f"output {output} is not an earlier export (no "
                      f"{MANIFEST}): not replacing it, even with --overwrite")


def _preprocessing(meta: dict[str, Any], config: model_lib.ModelConfig
                   ) -> dict[str, Any]:
  return {**model_dir_lib.default_preprocessing(config.vision.image_size),
          **meta.get("preprocessing", {})}


def _versions() -> dict[str, str]:
  out = {}
  for name in _VERSIONS:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


@contextlib.contextmanager
def _no_progress_bars():
  """transformers' per-shard save/load bars are noise here (one shard)."""
  enabled = hf_logging.is_progress_bar_enabled()
  hf_logging.disable_progress_bar()
  try:
    yield
  finally:
    if enabled:
      hf_logging.enable_progress_bar()


def export(model_dir: str, output: str, overwrite: bool = False
           ) -> dict[str, Any]:
  """Exports a dashclip model dir (or training workdir) to `output`.

  Returns the report also written to `output`/export_hf.json: the model
  dir, each part's directory, files and settings, and the notes (what is
  used differently from HF's defaults). Raises ExportError (one line,
  naming the culprit) for a directory that is not ours, an existing output
  without `overwrite`, or a geometry HF cannot hold.
  """
  model_dir, meta, config = _read_model_dir(model_dir)
  pre = _preprocessing(meta, config)
  notes = checks.check_exportable(config, pre)
  output = os.path.abspath(output)
  _check_output(output, model_dir, overwrite)

  _, trees, _ = model_dir_lib.load_model_dir(model_dir)
  params = jax.tree.map(np.asarray, trees["params"])
  vocab = os.path.join(model_dir, meta.get("tokenizer", {}).get(
      "vocab", model_dir_lib.VOCAB_FILE))
  # As dashclip_jax.load cuts texts (inference.DashClipEncoder).
  max_length = min(pre["text_max_length"], config.text.max_positions,
                   config.query.max_positions)
  # One tokenizer per part: BlipProcessor marks the one it is given as its
  # own (processor_class), which sentence-transformers would then load.
  new_tokenizer = functools.partial(hf_tokenizer.hf_tokenizer, vocab,
                                    max_length, pre["caption_max_words"])
  report: dict[str, Any] = dict(
      model_dir=model_dir, output=output,
      provenance=meta.get("provenance", {}), text_max_length=max_length,
      caption_max_words=pre["caption_max_words"], notes=notes,
      versions=_versions())

  partial = output + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    with _no_progress_bars():
      report["blip"] = dict(
          dir=os.path.join(output, "blip"), **blip.write_blip(
              os.path.join(partial, "blip"), config, params, pre,
              new_tokenizer()))
      report["query"] = dict(
          dir=os.path.join(output, "query"), **query.write_query(
              os.path.join(partial, "query"), config, params,
              new_tokenizer()))
    report["product"] = dict(dir=output, **product.write_product(
        partial, config, params))
    with open(os.path.join(partial, "README.md"), "w") as f:
      f.write(card.model_card(model_dir, meta, config, report))
    with open(os.path.join(partial, MANIFEST), "w") as f:
      json.dump(report, f, indent=2)
    if os.path.isdir(output):  # Checked above: empty, or an earlier export.
      shutil.rmtree(output)
    os.replace(partial, output)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return report
