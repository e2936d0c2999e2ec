"""Every image mode Pillow reads keeps its meaning in `EncodedImage.pixels`:
each mode is written with Pillow from a numpy array, decoded by the project,
and compared with a conversion computed here with numpy from the array
(not with Pillow's `convert`). Also the EXIF orientation, on the JPEG fast
path (simplejpeg) and on Pillow's."""

import colorsys
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from inception_jax.data import preprocess

H, W = 6, 8


def _gradient(lo=0, hi=255, channels=None, dtype=np.uint8):
  """An (H, W[, channels]) ramp from lo to hi, different in each channel."""
  n = H * W * (channels or 1)
  ramp = np.linspace(lo, hi, n).round().astype(dtype)
  return ramp.reshape((H, W, channels) if channels else (H, W))


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
  data = io.BytesIO()
  img.save(data, format=fmt, **params)
  return data.getvalue()


def _decode(data, where='test image'):
  return preprocess.EncodedImage(data, where).pixels()


def _rgb(gray: np.ndarray) -> np.ndarray:
  return np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=2)


def _assert_close(got, want, tol=1):
  assert got.dtype == np.uint8 and got.shape == want.shape[:2] + (3,)
  diff = np.abs(got.astype(int) - np.asarray(want).astype(int))
  assert diff.max() <= tol, f'max difference {diff.max()}'


# --- Bit depth ----------------------------------------------------------------

def test_16_bit_gray_png_reads_as_its_8_bit_twin():
  """The issue: a 16-bit PNG came out mostly white (Pillow clips at 255)."""
  gray8 = _gradient()
  png16 = _encode(Image.fromarray(gray8.astype(np.uint16) * 257), 'PNG')  # v·257: v in 16 bits
  assert Image.open(io.BytesIO(png16)).mode in ('I;16', 'I')               # really 16-bit
  png8 = _encode(Image.fromarray(gray8), 'PNG')
  np.testing.assert_array_equal(_decode(png16), _decode(png8))
  np.testing.assert_array_equal(_decode(png16), _rgb(gray8))


def test_16_bit_gray_png_scales_by_its_bit_depth():
  gray16 = _gradient(0, 65535, dtype=np.uint16)
  got = _decode(_encode(Image.fromarray(gray16), 'PNG'))
  _assert_close(got, _rgb((gray16 / 257).round()))          # within 1 of v/257
  np.testing.assert_array_equal(got, _rgb(gray16 >> 8))      # TF's decode_png exactly


def test_16_bit_gray_eval_image_matches_the_8_bit_twin():
  """What `predict` sees: the network input of both files."""
  gray8 = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))
  opts = preprocess.Options(image_size=32)
  twin = preprocess.eval_image(_encode(Image.fromarray(gray8), 'PNG'), opts)
  deep = preprocess.eval_image(
      _encode(Image.fromarray(gray8.astype(np.uint16) * 257), 'PNG'), opts)
  np.testing.assert_array_equal(deep, twin)


@pytest.mark.parametrize('mode', ['I;16', 'I;16B', 'I;16L'])
def test_16_bit_gray_tiff_in_either_byte_order(mode):
  gray16 = _gradient(0, 65535, dtype=np.uint16)
  dtype = '>u2' if mode == 'I;16B' else '<u2'
  img = Image.frombytes(mode, (W, H), gray16.astype(dtype).tobytes())
  data = _encode(img, 'TIFF')
  assert Image.open(io.BytesIO(data)).mode.startswith('I;16')
  np.testing.assert_array_equal(_decode(data), _rgb(gray16 >> 8))


def test_16_bit_gray_in_native_order_and_as_an_array():
  gray16 = _gradient(0, 65535, dtype=np.uint16)
  native = Image.frombytes('I;16N', (W, H), gray16.astype('=u2').tobytes())
  np.testing.assert_array_equal(preprocess.to_rgb8(native), _rgb(gray16 >> 8))
  np.testing.assert_array_equal(_decode(gray16), _rgb(gray16 >> 8))      # uint16 array


def test_32_bit_integer_gray_is_read_as_16_bit():
  """'I': what older Pillows make of a 16-bit PNG; out of 0..65535 clips."""
  gray = _gradient(0, 65535, dtype=np.int32)
  gray[0, :2] = -5, 70000
  data = _encode(Image.fromarray(gray), 'TIFF')
  assert Image.open(io.BytesIO(data)).mode == 'I'
  np.testing.assert_array_equal(_decode(data), _rgb(np.clip(gray, 0, 65535) >> 8))


def test_float_tiff_is_read_as_unit_range():
  gray = np.linspace(-0.25, 1.25, H * W, dtype=np.float32).reshape(H, W)
  data = _encode(Image.fromarray(gray), 'TIFF')
  assert Image.open(io.BytesIO(data)).mode == 'F'
  np.testing.assert_array_equal(_decode(data), _rgb(np.clip((gray * 255).round(), 0, 255)))


def test_one_bit_png_is_black_and_white():
  bits = _gradient() % 3 == 0
  data = _encode(Image.fromarray(bits), 'PNG')
  assert Image.open(io.BytesIO(data)).mode == '1'
  np.testing.assert_array_equal(_decode(data), _rgb(bits * 255))


def test_8_bit_gray_png():
  gray = _gradient()
  np.testing.assert_array_equal(_decode(_encode(Image.fromarray(gray), 'PNG')), _rgb(gray))


# --- Alpha and palettes -----------------------------------------------------------

def test_rgba_png_keeps_its_colours():
  """Alpha is dropped, as TF's decode_png(channels=3) and torchvision do."""
  rgba = _gradient(channels=4)
  rgba[0, 0, 3] = 0                               # fully transparent keeps its colour too
  data = _encode(Image.fromarray(rgba), 'PNG')
  assert Image.open(io.BytesIO(data)).mode == 'RGBA'
  np.testing.assert_array_equal(_decode(data), rgba[..., :3])


def test_gray_alpha_png_keeps_its_gray():
  la = _gradient(channels=2)
  data = _encode(Image.fromarray(la), 'PNG')
  assert Image.open(io.BytesIO(data)).mode == 'LA'
  np.testing.assert_array_equal(_decode(data), _rgb(la[..., 0]))


def _palette_image():
  rng = np.random.default_rng(0)
  palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
  index = (_gradient() % 16).astype(np.uint8)
  img = Image.frombytes('P', (W, H), index.tobytes())
  img.putpalette(palette.tobytes())
  return img, index, palette


def test_palette_png_with_transparency_is_looked_up():
  img, index, palette = _palette_image()
  data = _encode(img, 'PNG', transparency=3)
  read = Image.open(io.BytesIO(data))
  assert read.mode == 'P' and read.info.get('transparency') == 3
  np.testing.assert_array_equal(_decode(data), palette[index])


def test_palette_alpha_tiff_is_looked_up():
  _, index, palette = _palette_image()
  alpha = _gradient()
  pa = Image.frombytes('PA', (W, H), np.stack([index, alpha], -1).tobytes())
  pa.putpalette(palette.tobytes())
  data = _encode(pa, 'TIFF')
  assert Image.open(io.BytesIO(data)).mode == 'PA'
  np.testing.assert_array_equal(_decode(data), palette[index])


@pytest.mark.parametrize('mode', ['RGBa', 'La'])
def test_premultiplied_alpha_is_divided_out(mode):
  """The colour a straight-alpha image would hold (Pillow has no La → RGB)."""
  colour = _gradient(channels=3 if mode == 'RGBa' else 1).reshape(H, W, -1)
  alpha = np.maximum(_gradient()[..., None], 1)
  stored = (colour.astype(int) * alpha // 255).astype(np.uint8)   # premultiplied
  img = Image.frombytes(mode, (W, H), np.concatenate([stored, alpha], -1).tobytes())
  want = np.clip((stored * 255.0 / alpha).round(), 0, 255)
  want = want if mode == 'RGBa' else np.repeat(want, 3, axis=2)
  _assert_close(preprocess.to_rgb8(img), want)


# --- Other colour spaces -------------------------------------------------------------

def _cmyk_to_rgb(cmyk):
  """Pillow's (and Photoshop's naive) formula: (255 − C)(255 − K) / 255."""
  c = cmyk.astype(float)
  return ((255 - c[..., :3]) * (255 - c[..., 3:]) / 255).round()


def test_cmyk_tiff():
  cmyk = _gradient(channels=4)
  data = _encode(Image.frombytes('CMYK', (W, H), cmyk.tobytes()), 'TIFF')
  assert Image.open(io.BytesIO(data)).mode == 'CMYK'
  _assert_close(_decode(data), _cmyk_to_rgb(cmyk))


def test_cmyk_jpeg():
  """Through Pillow, not simplejpeg; compared with its own decoded CMYK."""
  cmyk = np.kron(_gradient(channels=4), np.ones((8, 8, 1), np.uint8))  # flat 8×8 blocks
  data = _encode(Image.frombytes('CMYK', (W * 8, H * 8), cmyk.tobytes()), 'JPEG', quality=95)
  stored = np.asarray(Image.open(io.BytesIO(data)))
  assert stored.shape[-1] == 4
  _assert_close(_decode(data), _cmyk_to_rgb(stored))


def test_ycbcr_tiff():
  ycc = _gradient(channels=3).astype(float)
  data = _encode(Image.frombytes('YCbCr', (W, H), ycc.astype(np.uint8).tobytes()), 'TIFF')
  assert Image.open(io.BytesIO(data)).mode == 'YCbCr'
  y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128   # JFIF's full range
  want = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
  _assert_close(_decode(data), np.clip(want.round(), 0, 255))


def _lab_to_srgb(lab):
  """CIELab (D50, as ICC's PCS; Pillow's bytes: L·255/100, a and b signed)
  → sRGB through XYZ and the Bradford-adapted sRGB matrix."""
  l = lab[..., 0].astype(float) * 100 / 255
  a, b = lab[..., 1].view(np.int8).astype(float), lab[..., 2].view(np.int8).astype(float)
  fy = (l + 16) / 116
  f = np.stack([fy + a / 500, fy, fy - b / 200], -1)
  xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * [0.96422, 1, 0.82521]
  matrix = np.array([[3.1338561, -1.6168667, -0.4906146], [-0.9787684, 1.9161415, 0.0334540],
                     [0.0719453, -0.2289914, 1.4052427]])
  linear = np.clip(xyz @ matrix.T, 0, 1)
  return (np.where(linear <= 0.0031308, 12.92 * linear,
                   1.055 * linear ** (1 / 2.4) - 0.055) * 255).round()


def test_lab_tiff():
  """Little CMS's transform, not this formula: equal within a few units."""
  rng = np.random.default_rng(0)
  lab = np.stack([rng.integers(40, 240, (H, W)), rng.integers(-30, 30, (H, W)),
                  rng.integers(-30, 30, (H, W))], -1).astype(np.uint8)  # a, b: signed bytes
  data = _encode(Image.frombytes('LAB', (W, H), lab.tobytes()), 'TIFF')
  assert Image.open(io.BytesIO(data)).mode == 'LAB'
  got, want = _decode(data).astype(int), _lab_to_srgb(lab)
  assert np.abs(got - want).max() <= 6 and np.abs(got - want).mean() < 1


def test_hsv():
  """No format stores HSV; the conversion itself, against colorsys."""
  hsv = _gradient(channels=3)
  got = preprocess.to_rgb8(Image.frombytes('HSV', (W, H), hsv.tobytes()))
  want = np.array([[colorsys.hsv_to_rgb(*(p / 255)) for p in row] for row in hsv]) * 255
  _assert_close(got, want.round())


# --- EXIF orientation ----------------------------------------------------------------

def _tagged(pixels, fmt, orientation, **params):
  exif = Image.Exif()
  exif[0x0112] = orientation
  return _encode(Image.fromarray(pixels), fmt, exif=exif.tobytes(), **params)


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_as_pillows_exif_transpose(fmt, orientation):
  pixels = _gradient(channels=3)
  data = _tagged(pixels, fmt, orientation, **({'quality': 100} if fmt == 'JPEG' else {}))
  img = preprocess.EncodedImage(data)
  want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert('RGB'))
  got = img.pixels()
  assert img.size == (got.shape[1], got.shape[0])
  _assert_close(got, want, tol=0 if fmt == 'PNG' else 1)


def test_exif_rotated_phone_photo_comes_out_upright():
  """A camera held upright stores the picture on its side with orientation
  6 ("rotate 90° clockwise to view"); the decoded image is the upright one,
  at full size and through the JPEG's reduced (DCT-scaled) decoding."""
  upright = np.zeros((160, 96, 3), np.uint8)
  upright[:40, :48] = 255                       # a white block at the top left
  stored = np.ascontiguousarray(np.rot90(upright, 1))   # on its side: 96 × 160
  data = _tagged(stored, 'JPEG', 6, quality=100)
  img = preprocess.EncodedImage(data)
  assert img.size == (96, 160)
  assert np.abs(img.pixels().astype(int) - upright).mean() < 2
  opts = preprocess.Options(image_size=16)
  assert img.reduction(96 * 0.875 / 16) > 1     # the eval crop takes the reduced path
  got = preprocess.eval_image(data, opts, scale=False).astype(int)
  # The untagged upright JPEG through the same reduced decoding, not the
  # array: DCT scaling blurs the block's edges alike in both.
  plain = _encode(Image.fromarray(upright), 'JPEG', quality=100)
  assert np.abs(got - preprocess.eval_image(plain, opts, scale=False)).mean() < 1
  flipped = np.ascontiguousarray(upright[::-1, ::-1])
  assert np.abs(got - preprocess.eval_image(flipped, opts, scale=False)).mean() > 20


def test_malformed_exif_reads_as_untagged():
  pixels = _gradient(channels=3)
  data = _encode(Image.fromarray(pixels), 'PNG', exif=b'Exif\x00\x00garbage')
  np.testing.assert_array_equal(_decode(data), pixels)


# --- Errors ---------------------------------------------------------------------------

def test_undecodable_image_names_the_file_and_mode():
  data = _encode(Image.fromarray(_gradient(0, 65535, dtype=np.uint16)), 'PNG')
  with pytest.raises(preprocess.CorruptImageError, match=r'scan\.png \(mode I;16\)'):
    _decode(data[:60], 'scan.png')
