"""Geometry inference: the model config a source converts into.

It comes from the source's config.json when it has one, from the tensor
shapes and `base`'s (BLIP-14M's) values otherwise, and `--set` overrides it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from dashclip_jax.convert.errors import ConversionError
from dashclip_jax.convert.errors import UsageError
from dashclip_jax import model as model_lib
from dashclip_jax.model import tokenizer as tok

# Values HF's BlipConfig uses for keys a saved config.json leaves out (they
# are NOT BLIP-14M's: text heads 8, vision eps 1e-5, image 384).
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12,
                           image_size=384, patch_size=16, layer_norm_eps=1e-5)
_HF_TEXT_DEFAULTS = dict(vocab_size=30524, hidden_size=768,
                         intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=512,
                         layer_norm_eps=1e-12, hidden_dropout_prob=0.0)


def infer_geometry(tensors: dict[str, np.ndarray], hf_config: dict | None,
                   layout: str, base: model_lib.ModelConfig,
                   bert_into: tuple[str, ...],
                   overrides: dict[str, Any] | None = None
                   ) -> model_lib.ModelConfig:
  """The target model config: from config.json or the shapes, then `--set`."""
  if layout == "hf_bert":
    config = bert_geometry(tensors, hf_config, base, bert_into)
  elif hf_config is not None:
    config = geometry_from_hf_config(hf_config, layout, base)
  else:
    config = geometry_from_shapes(tensors, layout, base)
  if overrides:
    config = apply_overrides(config, overrides)
  return config


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


def bert_geometry(tensors, hf_config: dict | None,
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
