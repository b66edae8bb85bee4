"""Reading sources: a `.pth`/`.bin`, `.safetensors` or HF directory -> tensors.

Torch pickles are read with `weights_only=True`: no arbitrary objects.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from dashclip_jax.convert.errors import ConversionError

log = logging.getLogger(__name__)


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
