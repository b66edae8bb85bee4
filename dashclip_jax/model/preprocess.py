"""BLIP's eval image transform: square bicubic resize, /255, CLIP normalisation."""

from __future__ import annotations

import numpy as np
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def to_pil(image) -> Image.Image:
  """An uint8 HxWx3 (or HxW) array or a PIL image -> RGB PIL image."""
  if isinstance(image, Image.Image):
    return image.convert("RGB") if image.mode != "RGB" else image
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise TypeError(
        f"image arrays must be uint8 HxWx3, got dtype {array.dtype}")
  if array.ndim == 2:
    array = np.stack([array] * 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ValueError(
        f"image arrays must be HxWx3 (or HxW / HxWx1 / HxWx4), got shape "
        f"{array.shape}")
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return Image.fromarray(array[..., :3])


def normalize(pixels_uint8: np.ndarray) -> np.ndarray:
  """uint8 (..., S, S, 3) -> float32 normalised with CLIP's mean/std."""
  pixels = np.asarray(pixels_uint8, np.float32) / 255.0
  return (pixels - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


def resize_square(image, image_size: int) -> np.ndarray:
  """Square bicubic resize (aspect not kept, no crop) -> uint8 (S, S, 3)."""
  pil = to_pil(image)
  if pil.size != (image_size, image_size):
    pil = pil.resize((image_size, image_size), Image.BICUBIC)
  return np.asarray(pil, np.uint8)


def eval_transform(image, image_size: int) -> np.ndarray:
  """BLIP's eval transform -> float32 (S, S, 3) normalised, NHWC order."""
  return normalize(resize_square(image, image_size))
