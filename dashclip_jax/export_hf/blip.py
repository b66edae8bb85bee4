"""OUT/blip: the BLIP parts of a model as a `BlipForImageTextRetrieval`
directory (config.json, model.safetensors, tokenizer, image processor).

The parts: the ViT (`img`), the text encoder with cross-attention (`txt`),
`vision_proj`, `text_proj`, `itm_head`. Their torch tensors are the
converter's HF-BLIP table run backwards (weights.py). Geometry goes into
BlipConfig's vision_config / text_config; `temp` into
`logit_scale_init_value` (BlipModel's meaning: logits = cos *
exp(logit_scale), so temp = exp(-logit_scale_init_value); the retrieval
class has no tensor for it), and again, with the poolings and token ids
the torch code needs, under config.json's `dashclip` key.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import transformers

from dashclip_jax.convert import rename
from dashclip_jax.export_hf import weights
from dashclip_jax import model as model_lib
from dashclip_jax.model import tokenizer as tok

PARTS = ("img", "txt", "vision_proj", "text_proj", "itm_head")


def blip_config(config: model_lib.ModelConfig, temp: float
                ) -> transformers.BlipConfig:
  v, t = config.vision, config.text
  return transformers.BlipConfig(
      vision_config=dict(
          hidden_size=v.width, intermediate_size=v.mlp_dim,
          num_hidden_layers=v.depth, num_attention_heads=v.heads,
          image_size=v.image_size, patch_size=v.patch_size,
          layer_norm_eps=v.ln_eps, hidden_act="gelu", attention_dropout=0.0),
      text_config=dict(
          vocab_size=t.vocab_size, hidden_size=t.width,
          intermediate_size=t.mlp_dim, num_hidden_layers=t.depth,
          num_attention_heads=t.heads, max_position_embeddings=t.max_positions,
          layer_norm_eps=t.ln_eps, hidden_dropout_prob=t.dropout,
          attention_probs_dropout_prob=t.dropout, hidden_act="gelu",
          # The decoder configuration is the one with cross-attention.
          is_decoder=True, encoder_hidden_size=v.width,
          pad_token_id=tok.PAD_ID, bos_token_id=tok.DEC_ID,
          sep_token_id=tok.SEP_ID),
      image_text_hidden_size=config.embed_dim,
      logit_scale_init_value=math.log(1.0 / temp),
      dashclip=dict(temp=temp, text_pooling=config.text_pooling,
                    product_pooling=config.product_pooling,
                    cls_token_id=tok.CLS_ID, enc_token_id=tok.ENC_ID),
      architectures=["BlipForImageTextRetrieval"])


def blip_model(config: model_lib.ModelConfig, params: dict
               ) -> transformers.BlipForImageTextRetrieval:
  """The torch model holding our BLIP parts (every tensor set, strictly)."""
  hf_config = blip_config(config, float(np.asarray(params["temp"])))
  model = transformers.BlipForImageTextRetrieval(hf_config)
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  tensors = weights.torch_tensors(shapes, rename.HF_BLIP, params, config,
                                  exported=PARTS)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()},
                        strict=True)
  return model.eval()


def image_processor(preprocessing: dict[str, Any], image_size: int
                    ) -> transformers.BlipImageProcessorPil:
  """BLIP's eval transform (preprocess.eval_transform): PIL bicubic square
  resize, /255, mean/std."""
  size = preprocessing.get("image_size") or image_size
  return transformers.BlipImageProcessorPil(
      size={"height": size, "width": size},
      resample=transformers.image_utils.PILImageResampling.BICUBIC,
      image_mean=list(preprocessing["mean"]),
      image_std=list(preprocessing["std"]), do_convert_rgb=True)


def write_blip(out_dir: str, config: model_lib.ModelConfig, params: dict,
               preprocessing: dict[str, Any],
               tokenizer: transformers.PreTrainedTokenizerFast
               ) -> dict[str, Any]:
  """Writes `out_dir` (OUT/blip) -> its part of the export report."""
  model = blip_model(config, params)
  model.save_pretrained(out_dir)
  processor = transformers.BlipProcessor(
      image_processor=image_processor(preprocessing, config.vision.image_size),
      tokenizer=tokenizer)
  processor.save_pretrained(out_dir)
  return dict(
      files=sorted(os.listdir(out_dir)),
      class_name="BlipForImageTextRetrieval",
      tensors=len(model.state_dict()),
      parameters=sum(p.numel() for p in model.parameters()),
      temp=model.config.dashclip["temp"])
