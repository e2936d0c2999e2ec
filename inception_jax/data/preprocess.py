"""Inception preprocessing, as in Google's `image_processing.py` and the Cloud TPU
`inception_preprocessing.py` (docs/paper_notes.md#preprocessing).

Training: a distorted bounding-box crop (area 5–100% of the image, aspect
ratio 3/4–4/3, 10 attempts, falling back to a central crop), bilinear resize
to the network's input, a random horizontal flip, optional colour distortion.
Evaluation: the central 87.5% of the image, resized. Pixels end in [-1, 1].

Images are decoded with Pillow; for JPEGs the decoder is asked for the
smallest DCT scale (1/2, 1/4, 1/8) that still covers the crop at the output
resolution. The crop is resized with OpenCV's bilinear filter, which, like
`tf.image.resize`, reads nothing outside the crop and does not antialias. Every random choice comes from the generator passed
in, which the pipeline derives from (seed, epoch, example index).
"""

from __future__ import annotations

import dataclasses
import io
import math

import cv2
import numpy as np
from PIL import Image

from inception_jax.errors import UserError


class CorruptImageError(UserError):
  """An image that cannot be read or decoded; the message names it."""


@dataclasses.dataclass(frozen=True)
class Options:
  """Preprocessing settings (`config.data.*`)."""
  image_size: int
  crop_area: tuple[float, float] = (0.05, 1.0)
  aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  crop_attempts: int = 10
  color_distort: bool = False
  eval_central_fraction: float = 0.875


def open_image(image, where: str = 'image') -> Image.Image:
  """A lazily decoded Pillow image from encoded bytes or a uint8 HWC array."""
  try:
    if isinstance(image, np.ndarray):
      return Image.fromarray(image)
    return Image.open(io.BytesIO(bytes(image)))
  except Exception as e:  # Pillow raises many types for bad files.
    raise CorruptImageError(f'cannot read {where}: {e}') from None


def sample_crop(rng: np.random.Generator, height: int, width: int,
                opts: Options) -> tuple[int, int, int, int]:
  """(top, left, crop height, crop width) of a distorted bounding box; the
  whole image is the only box, as in Google's TPU recipe."""
  area = height * width
  for _ in range(opts.crop_attempts):
    target = rng.uniform(*opts.crop_area) * area
    aspect = rng.uniform(*opts.aspect_ratio)
    h = int(round(math.sqrt(target / aspect)))
    w = int(round(math.sqrt(target * aspect)))
    if 0 < h <= height and 0 < w <= width:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return central_crop(height, width, 1.0, opts.aspect_ratio)


def central_crop(height: int, width: int, fraction: float,
                 aspect_ratio: tuple[float, float] | None = None):
  """The central `fraction` of each side, optionally clamped to an aspect range."""
  h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
  if aspect_ratio is not None:
    lo, hi = aspect_ratio
    if w / h < lo:
      h = max(1, round(w / lo))
    elif w / h > hi:
      w = max(1, round(h * hi))
  return (height - h) // 2, (width - w) // 2, h, w


def crop_and_resize(img: Image.Image, box, size: int, where: str) -> np.ndarray:
  """Crop `box` = (top, left, h, w) and resize bilinearly to size×size RGB."""
  top, left, h, w = box
  try:
    if img.format == 'JPEG':
      # Decode at the smallest DCT scale that keeps the crop ≥ the output.
      scale = min(h, w) / size
      if scale >= 2:
        full_w, full_h = img.size
        img.draft('RGB', (math.ceil(full_w / scale), math.ceil(full_h / scale)))
        fy, fx = img.size[1] / full_h, img.size[0] / full_w
        top, left, h, w = top * fy, left * fx, h * fy, w * fx
    if img.mode != 'RGB':
      img = img.convert('RGB')
    pixels = np.asarray(img)
  except Exception as e:
    raise CorruptImageError(f'cannot decode {where}: {e}') from None
  top, left = round(top), round(left)
  crop = pixels[top:top + max(1, round(h)), left:left + max(1, round(w))]
  # Bilinear without antialiasing, as tf.image.resize; reads only the crop.
  return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def distort_color(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Brightness ±32/255, saturation and contrast ×[0.5, 1.5], in one of two
  orders (Google's `distort_color`, without the hue shift); x in [0, 1]."""
  def brightness(x):
    return x + rng.uniform(-32 / 255, 32 / 255)

  def saturation(x):
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    return grey[..., None] + rng.uniform(0.5, 1.5) * (x - grey[..., None])

  def contrast(x):
    mean = x.mean(axis=(0, 1), keepdims=True)
    return mean + rng.uniform(0.5, 1.5) * (x - mean)

  ops = (brightness, saturation, contrast) if rng.integers(2) else (
      saturation, brightness, contrast)
  for op in ops:
    x = op(x)
  return np.clip(x, 0.0, 1.0)


def to_unit_range(x: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] → float32 [-1, 1]."""
  return x.astype(np.float32) * (2.0 / 255.0) - 1.0


def train_image(image, rng: np.random.Generator, opts: Options,
                where: str = 'image') -> np.ndarray:
  img = open_image(image, where)
  width, height = img.size
  box = sample_crop(rng, height, width, opts)
  x = crop_and_resize(img, box, opts.image_size, where)
  if rng.integers(2):
    x = x[:, ::-1]
  if opts.color_distort:
    x = distort_color(x.astype(np.float32) / 255.0, rng) * 255.0
  return to_unit_range(x)


def eval_image(image, opts: Options, where: str = 'image') -> np.ndarray:
  img = open_image(image, where)
  width, height = img.size
  box = central_crop(height, width, opts.eval_central_fraction)
  return to_unit_range(crop_and_resize(img, box, opts.image_size, where))
