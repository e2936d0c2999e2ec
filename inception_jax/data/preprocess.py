"""Inception preprocessing, as in Google's `image_processing.py` and the Cloud TPU
`inception_preprocessing.py` (docs/paper_notes.md#preprocessing).

Training: a distorted bounding-box crop — TensorFlow's
`sample_distorted_bounding_box` as Google's code calls it (area 5–100% of
the image, aspect ratio 3/4–4/3, covering at least 10% of the image, 100
attempts, else the whole image), or a crop of uniformly drawn area
('uniform_area', 10 attempts, else a central crop; the demo's) — bilinear
resize to the network's input, a random horizontal flip, optionally Google's
colour distortion (brightness, saturation, hue, contrast).
Evaluation: the central 87.5% of the image, resized. Pixels end in [-1, 1].

JPEGs are decoded by libjpeg-turbo through simplejpeg, straight into an
array (the pixels Pillow gives, in about two thirds of the time), at the
smallest DCT scale (1/2, 1/4, 1/8, chosen as Pillow's `draft` would) that
still covers the crop at the output resolution; other images (PNG, a CMYK
JPEG, an array) go through Pillow, every mode keeping its meaning in 8-bit
RGB (`to_rgb8`: 16-bit gray scaled, not clipped; alpha dropped), and an EXIF
orientation is applied on both paths (`exif_orientation`). The crop is
resized with OpenCV's bilinear filter, which, like
`tf.image.resize`, reads nothing outside the crop and does not antialias. Every random choice comes from the generator passed
in, which the pipeline derives from (seed, epoch, example index).
"""

from __future__ import annotations

import dataclasses
import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from inception_jax.errors import ConfigError, UserError


CROP_SAMPLERS = ('tensorflow', 'uniform_area')
COLOR_DISTORTIONS = ('none', 'inception')


class CorruptImageError(UserError):
  """An image that cannot be read or decoded; the message names it."""


@dataclasses.dataclass(frozen=True)
class Options:
  """Preprocessing settings (`config.data.*`); the defaults are Google's."""
  image_size: int
  crop_sampler: str = 'tensorflow'       # or 'uniform_area' (`sample_crop`)
  crop_area: tuple[float, float] = (0.05, 1.0)
  aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  crop_attempts: int = 100
  min_object_covered: float = 0.1        # tensorflow sampler only
  color_distort: str = 'none'            # or 'inception' (`distort_color`)
  eval_central_fraction: float = 0.875

  def __post_init__(self):
    if self.crop_sampler not in CROP_SAMPLERS:
      raise ConfigError(f'data.crop_sampler must be one of {list(CROP_SAMPLERS)}, '
                        f'got {self.crop_sampler!r}')
    if self.color_distort not in COLOR_DISTORTIONS:
      raise ConfigError(f'data.color_distort must be one of {list(COLOR_DISTORTIONS)}, '
                        f'got {self.color_distort!r}')
    if self.crop_attempts < 1 or not 0 <= self.min_object_covered <= 1:
      raise ConfigError('data.crop_attempts must be >= 1 and data.min_object_covered '
                        'in [0, 1]')


class EncodedImage:
  """An image read as far as its header (`size`); `pixels` decodes it.

  Every mode Pillow reads keeps its meaning in 8-bit RGB (`to_rgb8`), and
  an EXIF orientation tag is applied (`size` and `pixels` are upright).
  """

  def __init__(self, image, where: str = 'image'):
    self.where, self._jpeg, self._orientation = where, None, 1
    try:
      if isinstance(image, np.ndarray):
        self._pil = Image.fromarray(image)
      else:
        data = bytes(image)
        self._pil = Image.open(io.BytesIO(data))
        self._orientation = exif_orientation(self._pil)
        if self._pil.format == 'JPEG' and self._pil.mode in ('RGB', 'L'):
          self._jpeg = data
    except Exception as e:  # Pillow raises many types for bad files.
      raise CorruptImageError(f'cannot read {where}: {e}') from None

  @property
  def size(self) -> tuple[int, int]:
    """(width, height) upright, as `pixels` returns it."""
    width, height = self._pil.size
    return (height, width) if self._orientation in _SWAPS_AXES else (width, height)

  def reduction(self, scale: float) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) that keeps a crop `scale`
    times the output at least the output's size: what Pillow's
    `draft('RGB', size / scale)` picks. 1 for anything but a JPEG."""
    if self._pil.format != 'JPEG' or scale < 2:
      return 1
    width, height = self.size
    fits = min(width // math.ceil(width / scale), height // math.ceil(height / scale))
    return next(s for s in (8, 4, 2, 1) if fits >= s)

  def pixels(self, reduction: int = 1) -> np.ndarray:
    """RGB uint8 (height, width, 3), upright, a JPEG decoded at 1/`reduction`
    of its size."""
    return upright(self._decode(reduction), self._orientation)

  def _decode(self, reduction: int) -> np.ndarray:
    """The pixels as stored (before the EXIF orientation)."""
    width, height = self._pil.size
    size = (-(-width // reduction), -(-height // reduction))
    try:
      if self._jpeg is not None:
        try:
          return simplejpeg.decode_jpeg(self._jpeg, 'RGB', min_height=size[1],
                                        min_width=size[0])
        except ValueError:
          pass      # what libjpeg-turbo refuses strictly (a truncated file): Pillow decides
      img = self._pil
      if reduction > 1:
        img.draft('RGB', (width // reduction, height // reduction))
      return to_rgb8(img)
    except Exception as e:
      raise CorruptImageError(
          f'cannot decode {self.where} (mode {self._pil.mode}): {e}') from None


def open_image(image, where: str = 'image') -> EncodedImage:
  """An image from encoded bytes or a uint8 HWC array, decoded on demand."""
  return EncodedImage(image, where)


# --- Modes and orientation -------------------------------------------------------

_INT_GRAY = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')
_PREMULTIPLIED = {'La': 'LA', 'RGBa': 'RGBA'}


def to_rgb8(img: Image.Image) -> np.ndarray:
  """uint8 RGB (height, width, 3) that means what `img` means, in any mode.

  - 16-bit gray ('I;16*'), and 'I', read as 16-bit (a 16-bit PNG or TIFF
    comes as 'I' from older Pillows; values outside 0..65535 clip): the top
    8 bits, value >> 8. That is what TensorFlow's `decode_png(dtype=uint8)`
    gives (libpng's strip_16) and what Pillow itself keeps of 16-bit RGB
    and gray-alpha PNGs, so a 16-bit picture reads as its 8-bit twin (whose
    16-bit form is v·257) whether stored gray or RGB. Pillow's own
    `convert('RGB')` clips these at 255 instead: a mostly white image.
  - 'F' (float gray): assumed in [0, 1] (the float-image convention);
    × 255, rounded, clipped.
  - Alpha ('LA', 'PA', 'RGBA', a palette's transparency) is dropped, the
    colour kept, as TensorFlow's `decode_png(channels=3)` and torchvision's
    `convert('RGB')` do — the references this project is checked against.
    Premultiplied alpha ('La', 'RGBa') is divided out first, so the colour
    is the same as the straight-alpha image's.
  - '1', 'L', 'P', 'CMYK', 'YCbCr', 'LAB', 'HSV', 'RGBX': Pillow's
    conversion ('1' → 0/255, palette lookup, CMYK → (255−C)(255−K)/255).
  Raises what Pillow raises for a mode it cannot convert.
  """
  if img.mode == 'RGB':
    return np.asarray(img)
  if img.mode in _INT_GRAY:
    gray = np.asarray(img).astype(np.int64)    # 'I;16B' is big-endian; 'I' signed
    return _gray_to_rgb(np.clip(gray, 0, 65535) >> 8)
  if img.mode == 'F':
    unit = np.nan_to_num(np.asarray(img, np.float64), nan=0.0)
    return _gray_to_rgb(np.clip(np.rint(unit * 255.0), 0, 255))
  if img.mode in _PREMULTIPLIED:               # Pillow has no 'La' → 'RGB'
    img = img.convert(_PREMULTIPLIED[img.mode])
  return np.asarray(img.convert('RGB'))


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
  """(height, width) values in 0..255 → uint8 (height, width, 3)."""
  return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


# EXIF orientation (tag 0x0112) → the numpy ops that make the stored pixels
# upright, as `ImageOps.exif_transpose` does; 5–8 swap width and height.
_ORIENT = {
    2: lambda x: x[:, ::-1],
    3: lambda x: x[::-1, ::-1],
    4: lambda x: x[::-1],
    5: lambda x: x.swapaxes(0, 1),
    6: lambda x: np.rot90(x, -1),
    7: lambda x: x[::-1, ::-1].swapaxes(0, 1),
    8: lambda x: np.rot90(x, 1),
}
_SWAPS_AXES = (5, 6, 7, 8)


def exif_orientation(img: Image.Image) -> int:
  """The EXIF orientation tag (1–8), 1 when absent or unreadable.

  Applied to every format, JPEG's simplejpeg path included (libjpeg-turbo
  ignores EXIF): a folder of phone photos should be seen upright, as
  viewers show them. TensorFlow's `decode_jpeg` and torchvision's loader
  ignore the tag, so a tagged image differs from theirs. A broken EXIF
  block does not make a readable image unreadable.
  """
  try:
    value = img.getexif().get(0x0112, 1)
  except Exception:        # Pillow raises many types for a malformed EXIF block
    return 1
  return value if value in _ORIENT else 1


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
  """`pixels` (height, width, 3) as stored → upright (contiguous, for OpenCV)."""
  if orientation not in _ORIENT:
    return pixels
  return np.ascontiguousarray(_ORIENT[orientation](pixels))


def sample_crop(rng: np.random.Generator, height: int, width: int,
                opts: Options) -> tuple[int, int, int, int]:
  """(top, left, crop height, crop width) of a distorted bounding box
  (`opts.crop_sampler`), the whole image being the only object box."""
  if opts.crop_sampler == 'tensorflow':
    return sample_distorted_bounding_box(rng, height, width, opts)
  area = height * width
  for _ in range(opts.crop_attempts):
    target = rng.uniform(*opts.crop_area) * area
    aspect = rng.uniform(*opts.aspect_ratio)
    h = int(round(math.sqrt(target / aspect)))
    w = int(round(math.sqrt(target * aspect)))
    if 0 < h <= height and 0 < w <= width:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return central_crop(height, width, 1.0, opts.aspect_ratio)


def sample_distorted_bounding_box(rng: np.random.Generator, height: int, width: int,
                                  opts: Options) -> tuple[int, int, int, int]:
  """TensorFlow's `sample_distorted_bounding_box` for one object box covering
  the whole image, as Google's Inception preprocessing calls it (area
  0.05–1, aspect 3/4–4/3, `min_object_covered` 0.1, 100 attempts).

  Each attempt draws an aspect ratio uniformly, then the crop *height*
  uniformly among the integers whose crop area lies in the area range (so the
  area is not uniform: small crops are rarer than under a uniform area), the
  width as the rounded height × aspect, and the offsets uniformly in
  [0, size − crop) (the last position is never drawn, as in TensorFlow). A
  crop covering less than `min_object_covered` of the box (here: of the
  image) is rejected — with the defaults, no crop is below 10% of the image.
  When no attempt succeeds, the whole image.
  """
  lo, hi = opts.aspect_ratio
  min_area = opts.crop_area[0] * width * height
  max_area = opts.crop_area[1] * width * height
  for _ in range(opts.crop_attempts):
    aspect = rng.uniform(lo, hi)
    box = _height_for_area(rng, height, width, min_area, max_area, aspect)
    if box is None:
      continue
    h, w = box
    if w * h < 1 or w * h / (width * height) < opts.min_object_covered:
      continue
    top = int(rng.integers(0, height - h)) if h < height else 0
    left = int(rng.integers(0, width - w)) if w < width else 0
    return top, left, h, w
  return 0, 0, height, width


def _height_for_area(rng, height, width, min_area, max_area, aspect):
  """One attempt's (crop height, width) for `aspect`, or None: TensorFlow's
  rules (heights rounded half to even; one step up or down to repair a
  rounding that leaves the area range)."""
  rint = lambda v: int(np.rint(v))
  h = rint(math.sqrt(min_area / aspect))
  max_h = rint(math.sqrt(max_area / aspect))
  if rint(max_h * aspect) > width:
    max_h = int((width + 0.5 - 1e-7) / aspect)
    if rint(max_h * aspect) > width:
      max_h -= 1
  max_h = min(max_h, height)
  h = min(h, max_h)
  if h < max_h:
    h += int(rng.integers(0, max_h - h + 1))
  w = rint(h * aspect)
  if w * h < min_area:
    h += 1
    w = rint(h * aspect)
  if w * h > max_area:
    h -= 1
    w = rint(h * aspect)
  if not (min_area <= w * h <= max_area and 0 < w <= width and 0 < h <= height):
    return None
  return h, w

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


def crop_and_resize(img: EncodedImage, box, size: int) -> np.ndarray:
  """Crop `box` = (top, left, h, w) and resize bilinearly to size×size RGB."""
  top, left, h, w = box
  # Decode at the smallest DCT scale that keeps the crop ≥ the output.
  reduction = img.reduction(min(h, w) / size)
  pixels = img.pixels(reduction)
  if reduction > 1:
    full_w, full_h = img.size
    fy, fx = pixels.shape[0] / full_h, pixels.shape[1] / full_w
    top, left, h, w = top * fy, left * fx, h * fy, w * fx
  top, left = round(top), round(left)
  crop = pixels[top:top + max(1, round(h)), left:left + max(1, round(w))]
  # Bilinear without antialiasing, as tf.image.resize; reads only the crop.
  return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


# --- Colour (Google's `distort_color`, Inception `image_processing.py`) --------

def _hsv_adjust(x: np.ndarray, saturation: float = 1.0, hue: float = 0.0) -> np.ndarray:
  """In HSV (OpenCV's conversion, hue in degrees): saturation × `saturation`
  clipped to [0, 1], hue + `hue` turns around the circle; back to RGB."""
  hsv = cv2.cvtColor(np.ascontiguousarray(x, np.float32), cv2.COLOR_RGB2HSV)
  if saturation != 1.0:
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(saturation), 0, 1)
  if hue:
    hsv[..., 0] = np.mod(hsv[..., 0] + np.float32(hue * 360), 360)
  return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
  """`tf.image.adjust_saturation`: HSV saturation × factor, clipped to [0, 1]."""
  return _hsv_adjust(x, saturation=factor)


def adjust_hue(x: np.ndarray, delta: float) -> np.ndarray:
  """`tf.image.adjust_hue`: hue + delta turns, around the circle."""
  return _hsv_adjust(x, hue=delta)


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
  """`tf.image.adjust_contrast`: (x − channel mean) × factor + channel mean."""
  mean = x.mean(axis=(0, 1), keepdims=True)
  return (x - mean) * factor + mean


def distort_color(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Google's Inception `distort_color` (x in [0, 1]): brightness ±32/255,
  saturation ×[0.5, 1.5], hue ±0.2, contrast ×[0.5, 1.5], in one of its two
  orders (chosen per image here, per reader thread there), clipped to [0, 1]."""
  brightness = lambda x: x + np.float32(rng.uniform(-32 / 255, 32 / 255))
  contrast = lambda x: adjust_contrast(x, np.float32(rng.uniform(0.5, 1.5)))

  def saturation_then_hue(x):        # adjacent in both orders: one trip to HSV
    factor = rng.uniform(0.5, 1.5)
    return _hsv_adjust(x, saturation=factor, hue=rng.uniform(-0.2, 0.2))
  order = ((brightness, saturation_then_hue, contrast) if rng.integers(2) == 0 else
           (brightness, contrast, saturation_then_hue))
  for op in order:
    x = op(x)
  return np.clip(x, 0.0, 1.0)


def to_unit_range(x: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] → float32 [-1, 1]: x · (2/255) − 1 in float32, in one
  new array."""
  out = np.multiply(x, np.float32(2.0 / 255.0), dtype=np.float32)
  out -= np.float32(1.0)
  return out


def train_image(image, rng: np.random.Generator, opts: Options,
                where: str = 'image', *, scale: bool = True) -> np.ndarray:
  """A training example in [-1, 1] (float32). `scale=False` leaves the uint8
  pixels where no colour distortion applies (the input pipeline's choice:
  `pipeline.network_input` scales them on the device)."""
  img = open_image(image, where)
  width, height = img.size
  box = sample_crop(rng, height, width, opts)
  x = crop_and_resize(img, box, opts.image_size)
  if rng.integers(2):
    x = x[:, ::-1]
  if opts.color_distort == 'inception':
    return to_unit_range(distort_color(x.astype(np.float32) / 255.0, rng) * 255.0)
  return to_unit_range(x) if scale else x


def eval_image(image, opts: Options, where: str = 'image', *,
               scale: bool = True) -> np.ndarray:
  """The central crop in [-1, 1] (float32); uint8 pixels with `scale=False`."""
  img = open_image(image, where)
  width, height = img.size
  box = central_crop(height, width, opts.eval_central_fraction)
  x = crop_and_resize(img, box, opts.image_size)
  return to_unit_range(x) if scale else x


# --- Multi-crop evaluation (Table 4) -------------------------------------------

# The shorter sides of Szegedy et al. 2014's four scales, for a 224×224 network;
# scaled by image_size / 224 for this one.
MULTI_CROP_SCALES = (256, 288, 320, 352)
MULTI_CROPS = (1, 12, 144)


def multi_crops(image, opts: Options, crops: int, where: str = 'image') -> np.ndarray:
  """The `crops` views of an image that multi-crop evaluation averages,
  (crops, opts.image_size, opts.image_size, 3) in [-1, 1].

  144 — Szegedy et al. 2014 (GoogLeNet), the protocol of the paper's Table 4:
  the image resized so that its shorter side is each of 4 scales (256, 288,
  320, 352 for a 224 input, here × opts.image_size/224); at each, 3 squares of that
  side (left, centre, right; top, centre, bottom for a portrait image); in
  each square its 4 corner crops, its centre crop and the whole square
  resized; and the mirror image of each: 4 × 3 × 6 × 2.

  12 — the paper does not spell it out. This project reads it as the 144
  protocol at its first scale on the central square only: 6 views and their
  mirrors (1 × 1 × 6 × 2), so 12 ⊂ 144.

  1 — training's evaluation crop (`eval_image`: the central
  `opts.eval_central_fraction`).
  """
  if crops not in MULTI_CROPS:
    raise ConfigError(f'crops must be one of {list(MULTI_CROPS)}, got {crops}')
  if crops == 1:
    return eval_image(image, opts, where)[None]
  pixels = open_image(image, where).pixels()
  scales = MULTI_CROP_SCALES[:1] if crops == 12 else MULTI_CROP_SCALES
  views = []
  for shorter in scales:
    resized = _resize_shorter(pixels, round(shorter * opts.image_size / 224))
    squares = _squares(resized)
    for square in (squares[1:2] if crops == 12 else squares):
      for view in _six_views(square, opts.image_size):
        views += [view, view[:, ::-1]]
  return to_unit_range(np.stack(views))


def _resize_shorter(pixels: np.ndarray, shorter: int) -> np.ndarray:
  height, width = pixels.shape[:2]
  scale = shorter / min(height, width)
  size = (max(shorter, round(width * scale)), max(shorter, round(height * scale)))
  return cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)


def _squares(pixels: np.ndarray) -> list[np.ndarray]:
  """The first, central and last square of side min(height, width)."""
  height, width = pixels.shape[:2]
  side = min(height, width)
  if width >= height:
    return [pixels[:, x:x + side] for x in (0, (width - side) // 2, width - side)]
  return [pixels[y:y + side] for y in (0, (height - side) // 2, height - side)]


def _six_views(square: np.ndarray, size: int) -> list[np.ndarray]:
  """4 corner crops, the centre crop (size×size) and the square resized."""
  side = square.shape[0]
  far, mid = side - size, (side - size) // 2
  corners = [square[y:y + size, x:x + size]
             for y, x in ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))]
  return corners + [cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)]
