r"""Renaming: one declarative table per source layout, and the function that
applies one.

Each table reads top to bottom like BLIP_REFERENCE §5a/§5b. A `Row` maps a
source name (a regex matched against the whole name) to a target path in
our param tree ("/"-separated; `\1` is the pattern's first group) and the
transform from the torch tensor to the flax array; an `Under` places a
sub-table below a name prefix (a regex matched at the start). Every row that
matches a name applies: the fused ViT qkv is three rows, and an hf_bert
tensor has one row per tower it fills. A name no row matches is unused.

Targets outside the param tree: `momentum/...` (BLIP's momentum encoders),
`queues/<name>` (its ITC queues) and `token_type` (BERT's token-type table,
folded into the position embeddings by `map_source`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Union

import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax.convert.errors import ConversionError

# (source tensor, config of the target's tower or None) -> flax array.
Transform = Callable[[np.ndarray, Any], np.ndarray]
Path = tuple[str, ...]


# ---------------------------------------------------------------------------
# Transforms (BLIP_REFERENCE §5d).
# ---------------------------------------------------------------------------


def same(w, tower):
  return w


def linear(w, tower):
  return w.T  # torch (out, in) -> flax (in, out).


def conv(w, tower):
  return w.transpose(2, 3, 1, 0)  # (O, I, kH, kW) -> (kH, kW, I, O).


def cls_token(w, tower):
  return w.reshape(1, 1, -1)


def positions(w, tower):
  return w.reshape(1, -1, w.shape[-1])


def scalar(w, tower):
  return w.reshape(())


def inverse_exp(w, tower):
  return np.exp(-w).reshape(())  # BlipModel: logits = cos * exp(scale).


def queue(w, tower):
  return w.T.copy()  # (E, Q) -> (Q, E).


def int_scalar(w, tower):
  return w.reshape(()).astype(np.int64)


def int_vector(w, tower):
  return w.reshape(-1).astype(np.int64)


def heads_kernel(w, tower):
  """q/k/v: Wᵀ as (in, heads, head_dim)."""
  return w.T.reshape(-1, tower.heads, tower.width // tower.heads)


def heads_bias(w, tower):
  return w.reshape(tower.heads, tower.width // tower.heads)


def out_kernel(w, tower):
  """Attention output: Wᵀ as (heads, head_dim, out)."""
  return w.T.reshape(tower.heads, tower.width // tower.heads, -1)


def qkv_part(index: int, then: Transform) -> Transform:
  """Part `index` (0 q, 1 k, 2 v) of a fused qkv tensor, then `then`."""
  def part(w, tower):
    width = tower.width
    if w.shape[0] != 3 * width:
      raise ConversionError(
          f"vision qkv: shape {w.shape}, expected first dim {3 * width}")
    return then(w[index * width:(index + 1) * width], tower)  # [q | k | v].
  return part


# ---------------------------------------------------------------------------
# Rows.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
  source: str  # Regex matched against the whole (remaining) name.
  target: str | None  # Path template; None: a known tensor, ignored.
  transform: Transform = same


@dataclasses.dataclass(frozen=True)
class Under:
  source: str  # Regex matched at the start of the name.
  target: str  # Path prefix template.
  rows: Table


Table = tuple[Union[Row, Under], ...]


def ignore(source: str) -> Row:
  return Row(source, None)


def _weight_bias(source: str, target: str, weight: tuple[str, Transform],
                 bias: Transform = same) -> tuple[Row, Row]:
  return (Row(rf"(?:{source})\.weight", f"{target}/{weight[0]}", weight[1]),
          Row(rf"(?:{source})\.bias", f"{target}/bias", bias))


def dense(source: str, target: str) -> tuple[Row, Row]:
  return _weight_bias(source, target, ("kernel", linear))


def layer_norm(source: str, target: str) -> tuple[Row, Row]:
  return _weight_bias(source, target, ("scale", same))


def conv2d(source: str, target: str) -> tuple[Row, Row]:
  return _weight_bias(source, target, ("kernel", conv))


def attention_in(source: str, target: str) -> tuple[Row, Row]:
  return _weight_bias(source, target, ("kernel", heads_kernel), heads_bias)


def attention_out(source: str, target: str) -> tuple[Row, Row]:
  return _weight_bias(source, target, ("kernel", out_kernel))


def fused_qkv(source: str, target: str) -> Table:
  """One (3W, ...) torch tensor -> separate q, k, v targets."""
  return tuple(
      row for i, part in enumerate(("query", "key", "value"))
      for row in _weight_bias(source, f"{target}/{part}",
                              ("kernel", qkv_part(i, heads_kernel)),
                              qkv_part(i, heads_bias)))


# ---------------------------------------------------------------------------
# The tables.
# ---------------------------------------------------------------------------

_BLIP_VIT = (  # visual_encoder.<name> (§5a).
    Row("cls_token", "cls_token", cls_token),
    Row("pos_embed", "pos_embed", positions),
    *conv2d(r"patch_embed\.proj", "patch_embed"),
    Under(r"blocks\.(\d+)\.", r"block_\1/", (
        *layer_norm("norm1", "norm1"),
        *fused_qkv(r"attn\.qkv", "attn"),
        *attention_out(r"attn\.proj", "attn/out"),
        *layer_norm("norm2", "norm2"),
        *dense(r"mlp\.(fc1|fc2)", r"mlp/\1"),
    )),
    *layer_norm("norm", "norm"),
)

_HF_VIT = (  # vision_model.<name> (§5b).
    Row(r"embeddings\.class_embedding", "cls_token", cls_token),
    Row(r"embeddings\.position_embedding", "pos_embed", positions),
    *conv2d(r"embeddings\.patch_embedding", "patch_embed"),
    Under(r"encoder\.layers\.(\d+)\.", r"block_\1/", (
        *layer_norm("layer_norm1", "norm1"),
        *fused_qkv(r"self_attn\.qkv", "attn"),
        *attention_out(r"self_attn\.projection", "attn/out"),
        *layer_norm("layer_norm2", "norm2"),
        *dense(r"mlp\.(fc1|fc2)", r"mlp/\1"),
    )),
    *layer_norm("post_layernorm", "norm"),
)

_BERT = (  # text_encoder.<name> (§5a), HF BertModel and BLIP's text model.
    Row(r"embeddings\.word_embeddings\.weight", "word_embed/embedding"),
    Row(r"embeddings\.position_embeddings\.weight", "pos_embed"),
    *layer_norm(r"embeddings\.LayerNorm", "embed_norm"),
    Under(r"encoder\.layer\.(\d+)\.", r"layer_\1/", (
        *attention_in(r"attention\.self\.(query|key|value)", r"self_attn/\1"),
        *attention_out(r"attention\.output\.dense", "self_attn/out"),
        *layer_norm(r"attention\.output\.LayerNorm", "self_attn_norm"),
        *attention_in(r"crossattention\.self\.(query|key|value)",
                      r"cross_attn/\1"),
        *attention_out(r"crossattention\.output\.dense", "cross_attn/out"),
        *layer_norm(r"crossattention\.output\.LayerNorm", "cross_attn_norm"),
        *dense(r"intermediate\.dense", "mlp/fc1"),
        *dense(r"output\.dense", "mlp/fc2"),
        *layer_norm(r"output\.LayerNorm", "mlp_norm"),
    )),
)

_HEADS = (
    *dense("(vision_proj|text_proj|itm_head)", r"\1"),
    # BlipModel: bias-free projections.
    Row(r"visual_projection\.weight", "vision_proj/kernel", linear),
    Row(r"text_projection\.weight", "text_proj/kernel", linear),
)

_POSITION_IDS = ignore(r".*embeddings\.position_ids")  # A buffer.

BLIP_ORIGINAL: Table = (
    _POSITION_IDS,
    ignore(r"text_decoder\..*"),  # The LM decoder: out of scope.
    Row("temp", "temp", scalar),
    Row("(image|text)_queue", r"queues/\1_queue", queue),
    Row("queue_ptr|ptr_queue", "queues/queue_ptr", int_scalar),
    Row("idx_queue", "queues/idx_queue", int_vector),
    Under(r"visual_encoder\.", "img/", _BLIP_VIT),
    Under(r"text_encoder\.", "txt/", _BERT),
    *_HEADS,
    Under(r"visual_encoder_m\.", "momentum/img/", _BLIP_VIT),
    Under(r"text_encoder_m\.", "momentum/txt/", _BERT),
    *dense("(vision_proj|text_proj)_m", r"momentum/\1"),
)

HF_BLIP: Table = (
    _POSITION_IDS,
    Under(r"vision_model\.", "img/", _HF_VIT),
    Under(r"(?:text_encoder|text_model)\.", "txt/", _BERT),
    *_HEADS,
    Row("logit_scale", "temp", inverse_exp),
)


def hf_bert(towers: tuple[str, ...]) -> Table:
  """HF BertModel (names with or without `bert.`) into each of `towers`."""
  return (
      _POSITION_IDS,
      Row(r"(?:bert\.)?embeddings\.token_type_embeddings\.weight",
          "token_type"),
      *(Under(r"(?:bert\.)?", f"{tower}/", _BERT) for tower in towers),
  )


def detect_layout(tensors: dict[str, np.ndarray]) -> str:
  keys = list(tensors)
  if any(k.startswith("visual_encoder.") for k in keys):
    return "blip_original"
  if any(k.startswith("vision_model.") for k in keys):
    return "hf_blip"
  if any(re.match(r"(bert\.)?embeddings\.word_embeddings\.weight$", k)
         for k in keys):
    return "hf_bert"
  raise ConversionError(
      "unknown checkpoint layout: expected BLIP (visual_encoder.*), HF BLIP "
      f"(vision_model.*) or HF BERT (embeddings.*); first keys: {keys[:5]}")


def table_for(layout: str, bert_into: tuple[str, ...]) -> Table:
  if layout == "hf_bert":
    return hf_bert(bert_into)
  return {"blip_original": BLIP_ORIGINAL, "hf_blip": HF_BLIP}[layout]


# ---------------------------------------------------------------------------
# Applying a table.
# ---------------------------------------------------------------------------


def targets_of(table: Table, name: str) -> list[tuple[str | None, Transform]]:
  """(target path, transform) of every row matching `name` (None: ignored)."""
  out = []
  for row in table:
    if isinstance(row, Under):
      m = re.match(row.source, name)
      if m:
        prefix = m.expand(row.target)
        out += [(None if t is None else prefix + t, f)
                for t, f in targets_of(row.rows, name[m.end():])]
    elif m := re.fullmatch(row.source, name):
      out.append((None if row.target is None else m.expand(row.target),
                  row.transform))
  return out


_TOWERS = {"img": "vision", "txt": "text", "query": "query"}


def apply_table(tensors: dict[str, np.ndarray], table: Table,
                config: model_lib.ModelConfig
                ) -> tuple[dict[Path, np.ndarray], set[str], set[str]]:
  """-> ({target path: array}, used names, ignored names)."""
  targets, used, ignored = {}, set(), set()
  for name, w in tensors.items():
    for target, transform in targets_of(table, name):
      if target is None:
        ignored.add(name)
        continue
      path = tuple(target.split("/"))
      root = path[1] if path[0] == "momentum" else path[0]
      tower = getattr(config, _TOWERS[root]) if root in _TOWERS else None
      try:
        targets[path] = transform(w, tower)
      except ConversionError as e:
        raise ConversionError(f"{name}: {e}") from None
      used.add(name)
  return targets, used, ignored


def map_source(tensors: dict[str, np.ndarray], layout: str,
               config: model_lib.ModelConfig, bert_into: tuple[str, ...],
               notes: list[str]):
  """-> ({target path: array}, {momentum path: array}, queues, used, ignored)."""
  mapped, used, ignored = apply_table(tensors, table_for(layout, bert_into),
                                      config)
  targets, momentum, queues, token_type = {}, {}, {}, None
  for path, array in mapped.items():
    if path[0] == "momentum":
      momentum[path[1:]] = array
    elif path[0] == "queues":
      queues[path[1]] = array
    elif path == ("token_type",):
      token_type = array
    else:
      targets[path] = array
  if "logit_scale" in used:
    temp = float(np.exp(-tensors["logit_scale"]))
    notes.append(f"temp = exp(-logit_scale) = {temp:.5f}")
  if token_type is not None:
    # MED has no token types; BERT always adds row 0 (single segment), so
    # folding it into every position row gives identical embeddings.
    for tower in bert_into:
      path = (tower, "pos_embed")
      if path in targets:
        targets[path] = targets[path] + token_type[0][None, :]
    notes.append("folded token_type_embeddings[0] into position embeddings "
                 f"of {', '.join(bert_into)}")
  return targets, momentum, queues, used, ignored
