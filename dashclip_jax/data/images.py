"""Decoding product images: encoded bytes -> uint8 RGB, or an ImageError
that names the culprit (a catalog row) and says what failed.

Images are turned upright by their EXIF orientation (a phone photo is
stored sideways with a tag saying so): training, evaluation and inference
all decode here, so they see the same pixels.
"""

from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np
from PIL import ExifTags
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError


class ImageError(ValueError):
  """An image could not be read or decoded.

  The message is "<where>: <reason>"; both parts are kept so that counters
  name the culprit once (`where`, e.g. "styles.csv line 17 (product 1865)")
  and say what failed (`reason`).
  """

  def __init__(self, where: str, reason: str):
    super().__init__(f"{where}: {reason}" if where else reason)
    self.where, self.reason = where, reason

  def __reduce__(self):  # Picklable despite the two-argument constructor.
    return type(self), (self.where, self.reason)


# An image over the pixel limit (`config.data.max_image_pixels`) is an
# ImageError read from its header, before any decoding (a 12000x12000 JPEG of
# 2 MB took 13 s and 1.9 GB per decode): skipped, counted and named like any
# bad image. The limit travels through the environment (`set_max_pixels`),
# so grain's spawned data workers apply it too.
DEFAULT_MAX_PIXELS = 50_000_000
_MAX_PIXELS_ENV = "DASHCLIP_MAX_IMAGE_PIXELS"

# PIL's own bomb warning names no product; the limit here is checked first
# and names it (PIL still refuses 2x its MAX_IMAGE_PIXELS, an ImageError).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def set_max_pixels(limit: int) -> None:
  """The pixel limit of this process and of the workers it starts (<= 0:
  none)."""
  os.environ[_MAX_PIXELS_ENV] = str(int(limit))


def max_pixels() -> int:
  """The pixel limit in force (`set_max_pixels`, else DEFAULT_MAX_PIXELS)."""
  return int(os.environ.get(_MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))


# PIL names a file object by its repr ("<_io.BytesIO object at 0x...>"),
# which says nothing about the culprit: messages drop it.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def decode_image(data: bytes, where: str = "") -> np.ndarray:
  """Encoded image bytes -> uint8 (H, W, 3) RGB. Raises ImageError, also
  for an image over `max_pixels()` (judged from its header, undecoded)."""
  limit = max_pixels()
  try:
    with Image.open(io.BytesIO(data)) as im:
      width, height = im.size  # From the header: nothing decoded yet.
      if 0 < limit < width * height:
        raise ImageError(where, (
            f"image of {width}x{height} = {width * height:,} pixels is over "
            f"data.max_image_pixels ({limit:,}); not decoded"))
      im.load()
      rgb = upright(im).convert("RGB")
  except Exception as e:  # PIL raises many types for corrupt data.
    if isinstance(e, ImageError):  # Over the pixel limit: says so itself.
      raise
    if isinstance(e, UnidentifiedImageError):
      reason = ("empty file" if not data else
                f"not an image in a known format ({len(data)} bytes)")
    else:
      reason = _OBJECT_REPR.sub("", str(e)) or type(e).__name__
    raise ImageError(where, f"cannot decode image: {reason}") from e
  arr = np.asarray(rgb, dtype=np.uint8)
  if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ImageError(where, f"empty image of shape {arr.shape}")
  return arr


def upright(im: Image.Image) -> Image.Image:
  """`im` turned by its EXIF orientation tag; itself when it has none (no
  copy: most images carry none)."""
  if im.getexif().get(ExifTags.Base.Orientation, 1) == 1:
    return im
  return ImageOps.exif_transpose(im)
