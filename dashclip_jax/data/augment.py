"""BLIP's train-time image augmentation on uint8 numpy images.

BLIP_REFERENCE.md section 3: RandomResizedCrop(S, scale=(min_scale, 1),
ratio=(3/4, 4/3), bicubic) -> RandomHorizontalFlip(0.5) -> RandomAugment(N=2,
M=5) over {Identity, AutoContrast, Brightness, Sharpness, Equalize, ShearX,
ShearY, TranslateX, TranslateY, Rotate}, each drawn op applied with p=0.5.
Then the caller normalises (`dashclip_jax.model.preprocess.normalize`).

All randomness comes from the `np.random.Generator` passed in, so an example's
augmentation is a pure function of (image, rng): grain derives that rng from
the pipeline seed and the element index, which makes the pipeline
deterministic for any number of worker processes.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image
from PIL import ImageOps

# BLIP's RandomAugment op list (augs=[...] in its transform config).
OPS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize",
       "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
MAX_LEVEL = 10.0
FILL = (128, 128, 128)  # Gray border fill of the geometric ops.


def crop_params(rng: np.random.Generator, height: int, width: int,
                scale: tuple[float, float],
                ratio: tuple[float, float] = (3 / 4, 4 / 3)
                ) -> tuple[int, int, int, int]:
  """torchvision RandomResizedCrop.get_params semantics -> (top, left, h, w).

  Ten tries at a random area fraction in `scale` and log-uniform aspect ratio
  in `ratio`; if none fits, a centre crop clamped to `ratio`.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, size: int,
                        rng: np.random.Generator, min_scale: float
                        ) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (size, size, 3): crop, then PIL bicubic resize."""
  top, left, h, w = crop_params(rng, image.shape[0], image.shape[1],
                                (min_scale, 1.0))
  crop = Image.fromarray(image[top:top + h, left:left + w])
  return np.asarray(crop.resize((size, size), Image.BICUBIC), dtype=np.uint8)


# --- RandomAugment ops on uint8 (H, W, 3). ---------------------------------


def autocontrast(image: np.ndarray) -> np.ndarray:
  """Per channel: stretch [min, max] to [0, 255] (PIL's, cutoff 0)."""
  return np.asarray(ImageOps.autocontrast(Image.fromarray(image)))


def equalize(image: np.ndarray) -> np.ndarray:
  """Per-channel histogram equalisation (PIL's)."""
  return np.asarray(ImageOps.equalize(Image.fromarray(image)))


def _enhance_factor(level: float) -> float:
  return level / MAX_LEVEL * 1.8 + 0.1


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
  table = np.clip(np.arange(256) * factor, 0, 255).astype(np.uint8)
  return table[image]


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
  """Blend with a 3x3 smoothed copy (PIL ImageEnhance.Sharpness semantics)."""
  if factor == 1.0:
    return image
  kernel = np.ones((3, 3), np.float32)
  kernel[1, 1] = 5
  kernel /= 13
  smooth = cv2.filter2D(image, -1, kernel).astype(np.float32)[1:-1, 1:-1]
  out = image.astype(np.float32)
  # The one-pixel border keeps the original pixels, as PIL does.
  out[1:-1, 1:-1] = smooth + factor * (out[1:-1, 1:-1] - smooth)
  return np.clip(out, 0, 255).astype(np.uint8)


def _affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  return cv2.warpAffine(image, matrix.astype(np.float32), (w, h),
                        flags=cv2.INTER_LINEAR, borderValue=FILL)


def shear_x(image, factor):
  return _affine(image, np.array([[1, factor, 0], [0, 1, 0]]))


def shear_y(image, factor):
  return _affine(image, np.array([[1, 0, 0], [factor, 1, 0]]))


def translate_x(image, offset):
  return _affine(image, np.array([[1, 0, -offset], [0, 1, 0]]))


def translate_y(image, offset):
  return _affine(image, np.array([[1, 0, 0], [0, 1, -offset]]))


def rotate(image, degrees):
  h, w = image.shape[:2]
  m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1)
  return _affine(image, m)


def apply_op(image: np.ndarray, name: str, magnitude: float,
             rng: np.random.Generator) -> np.ndarray:
  """One RandomAugment op at `magnitude` (0..10); signs drawn from rng."""
  sign = lambda: -1.0 if rng.random() > 0.5 else 1.0
  if name == "Identity":
    return image
  if name == "AutoContrast":
    return autocontrast(image)
  if name == "Equalize":
    return equalize(image)
  if name == "Brightness":
    return brightness(image, _enhance_factor(magnitude))
  if name == "Sharpness":
    return sharpness(image, _enhance_factor(magnitude))
  if name in ("ShearX", "ShearY"):
    f = magnitude / MAX_LEVEL * 0.3 * sign()
    return shear_x(image, f) if name == "ShearX" else shear_y(image, f)
  if name in ("TranslateX", "TranslateY"):
    off = magnitude / MAX_LEVEL * 10.0 * sign()  # translate_const = 10 px.
    return translate_x(image, off) if name == "TranslateX" else translate_y(
        image, off)
  if name == "Rotate":
    return rotate(image, magnitude / MAX_LEVEL * 30.0 * sign())
  raise ValueError(f"unknown augmentation op {name!r}; known: {OPS}")


def random_augment(image: np.ndarray, rng: np.random.Generator,
                   num_ops: int = 2, magnitude: float = 5.0,
                   prob: float = 0.5) -> np.ndarray:
  """BLIP RandomAugment(N, M): N ops drawn with replacement, each with p=0.5."""
  names = [OPS[i] for i in rng.integers(0, len(OPS), size=num_ops)]
  for name in names:
    if rng.random() > prob:
      continue
    image = apply_op(image, name, magnitude, rng)
  return image


def train_augment(image: np.ndarray, size: int, rng: np.random.Generator,
                  min_scale: float = 0.5, num_ops: int = 2,
                  magnitude: float = 5.0) -> np.ndarray:
  """BLIP train transform up to ToTensor: uint8 (H,W,3) -> uint8 (S,S,3)."""
  out = random_resized_crop(image, size, rng, min_scale)
  if rng.random() < 0.5:
    out = out[:, ::-1]
  out = np.ascontiguousarray(out)
  if num_ops:
    out = random_augment(out, rng, num_ops=num_ops, magnitude=magnitude)
  return out
