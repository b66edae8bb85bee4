"""An export side by side with `dashclip_jax.load`: the same images and
texts through both, and the max abs error of each output.

The torch side is what a user of the export runs: `OUT/blip` in
`BlipForImageTextRetrieval`, the functions of the shipped
`OUT/product_embedding.py` (imported from the export, not this package),
and `OUT/query` in sentence-transformers. Its inputs are either the
exported BlipProcessor's on raw images and text (`processor_inputs`, the
user's path) or our own preprocessing and token ids (`encoder_inputs`,
which isolates the weights from the processor). Used by
bench/export_hf_roundtrip.py and tests/test_export_hf.py.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any, Sequence

import numpy as np
import sentence_transformers
import torch
import transformers

from dashclip_jax import inference
from dashclip_jax.export_hf import product
from dashclip_jax.export_hf import torch_product

# The outputs both sides compute, in the order they are reported.
OUTPUTS = ("image", "text", "itm", "product")
TorchInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def shipped_module(export_dir: str) -> ModuleType:
  """`export_dir`/product_embedding.py, imported by path."""
  path = os.path.join(export_dir, product.MODULE_FILE)
  spec = importlib.util.spec_from_file_location("product_embedding", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_blip(export_dir: str) -> transformers.BlipForImageTextRetrieval:
  """`export_dir`/blip; raises ValueError if a tensor is missing, unexpected
  or mismatched (transformers would only warn and initialise it)."""
  path = os.path.join(export_dir, torch_product.BLIP_DIR)
  blip, info = transformers.BlipForImageTextRetrieval.from_pretrained(
      path, output_loading_info=True)
  wrong = {k: v for k, v in info.items() if v}
  if wrong:
    raise ValueError(f"{path}: tensors do not match the model: {wrong}")
  return blip.eval()


def load_query(export_dir: str) -> sentence_transformers.SentenceTransformer:
  return sentence_transformers.SentenceTransformer(
      os.path.join(export_dir, "query"), device="cpu")


def processor_inputs(export_dir: str, images: Sequence[Any],
                     texts: Sequence[str]) -> TorchInputs:
  """The exported BlipProcessor on raw (PIL or uint8) images and raw text,
  as the model card shows it."""
  processor = transformers.BlipProcessor.from_pretrained(
      os.path.join(export_dir, torch_product.BLIP_DIR))
  batch = processor(images=list(images), text=list(texts), padding=True,
                    truncation=True, return_tensors="pt")
  return (batch["pixel_values"], batch["input_ids"].long(),
          batch["attention_mask"].long())


def encoder_inputs(encoder: inference.DashClipEncoder, images: Sequence[Any],
                   texts: Sequence[str]) -> TorchInputs:
  """Our preprocessed pixels (NCHW) and token ids, as torch tensors."""
  pixels = torch.from_numpy(encoder.preprocess_images(images)).permute(
      0, 3, 1, 2)
  ids, mask = encoder.tokenize(texts)
  return (pixels, torch.from_numpy(ids.astype(np.int64)),
          torch.from_numpy(mask.astype(np.int64)))


def torch_outputs(export_dir: str, inputs: TorchInputs
                  ) -> dict[str, np.ndarray]:
  """OUTPUTS from the export, plus `hf_similarity`: HF's own
  image-text similarity (use_itm_head=False), (B, B)."""
  pixels, ids, mask = inputs
  blip = load_blip(export_dir)
  shipped = shipped_module(export_dir)
  embed = shipped.ProductEmbedding.from_export(export_dir)
  with torch.no_grad():
    got = dict(
        image=shipped.image_embedding(blip, pixels),
        text=shipped.text_embedding(blip, ids, mask),
        itm=shipped.itm_probability(blip, pixels, ids, mask),
        product=embed(pixels, ids, mask),
        hf_similarity=blip(input_ids=ids, pixel_values=pixels,
                           attention_mask=mask, use_itm_head=False).itm_score)
  return {k: v.numpy() for k, v in got.items()}


def dashclip_outputs(encoder: inference.DashClipEncoder,
                     images: Sequence[Any], texts: Sequence[str]
                     ) -> dict[str, np.ndarray]:
  """OUTPUTS from `dashclip_jax.load`'s encoder; image b pairs text b."""
  return dict(image=encoder.encode_image(images),
              text=encoder.encode_text(texts),
              itm=encoder.itm_score(images, texts),
              product=encoder.encode_product(images, texts))


def max_abs_error(got: Any, want: Any) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if got.shape != want.shape:
    raise ValueError(f"shapes differ: {got.shape} vs {want.shape}")
  return float(np.abs(got - want).max())


def errors(got: dict[str, Any], want: dict[str, Any]) -> dict[str, float]:
  """max_abs_error of every output `want` has."""
  return {k: max_abs_error(got[k], v) for k, v in want.items()}
