"""Image decoding (data/images.py): EXIF orientation and the pixel limit."""

import io

import numpy as np
from PIL import Image

from dashclip_jax.data import images as images_lib

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _jpeg(width, height, orientation=None, fill=None):
  """A JPEG whose left half is red and right half blue (as stored)."""
  arr = np.zeros((height, width, 3), np.uint8)
  arr[:, :width // 2] = RED
  arr[:, width // 2:] = BLUE
  if fill is not None:
    arr[:] = fill
  exif = Image.Exif()
  if orientation is not None:
    exif[0x0112] = orientation  # EXIF Orientation.
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif)
  return buf.getvalue()


def _near(pixels, colour):
  return np.abs(pixels.astype(int) - colour).max() < 40


def test_exif_orientation_6_decodes_upright():
  # Orientation 6: the camera stored the picture turned 90 degrees
  # counter-clockwise; shown upright it turns 90 degrees clockwise, so the
  # stored left (red) half becomes the top and the 32x16 image 16 wide.
  image = images_lib.decode_image(_jpeg(32, 16, orientation=6), "row 1")
  assert image.shape == (32, 16, 3)
  assert _near(image[2:14], RED) and _near(image[18:30], BLUE)


def test_no_or_upright_orientation_is_unchanged():
  for orientation in (None, 1):
    image = images_lib.decode_image(_jpeg(32, 16, orientation), "row 1")
    assert image.shape == (16, 32, 3)
    assert _near(image[:, 2:14], RED) and _near(image[:, 18:30], BLUE)
