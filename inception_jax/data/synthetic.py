"""The embedded synthetic dataset: procedurally drawn images whose class is a
shape filled with a texture, so a network has to learn real features.

Each class is one (shape, texture) pair — disk, square, triangle, ring,
cross or diamond, filled solid, with horizontal or vertical stripes, or a
checkerboard; classes 24–47 draw two objects instead of one. Everything
else is drawn at random per example and carries no label information:
colours, position, size, stripe period, the background gradient and noise.
A linear model on pixels cannot localise the object or separate texture from
colour, so it does clearly worse than a small convnet (tested).

Images are a pure function of (seed, split, index): no files, no download.
"""

from __future__ import annotations

import numpy as np

SHAPES = ('disk', 'square', 'triangle', 'ring', 'cross', 'diamond')
TEXTURES = ('solid', 'hstripes', 'vstripes', 'checker')
MAX_CLASSES = 2 * len(SHAPES) * len(TEXTURES)
SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}


def class_parts(label: int) -> tuple[str, str, int]:
  """(shape, texture, number of objects) of a class. Consecutive classes
  differ in shape and texture both."""
  n = len(SHAPES) * len(TEXTURES)
  c = label % n
  shape = c % len(SHAPES)
  texture = (c // len(SHAPES) + c) % len(TEXTURES)
  return SHAPES[shape], TEXTURES[texture], 1 + label // n


def _shape_mask(shape: str, dy, dx, r):
  if shape == 'disk':
    return dy**2 + dx**2 < r**2
  if shape == 'square':
    return np.maximum(abs(dy), abs(dx)) < 0.85 * r
  if shape == 'diamond':
    return abs(dy) + abs(dx) < r
  if shape == 'ring':
    d2 = dy**2 + dx**2
    return (d2 < r**2) & (d2 > (0.55 * r)**2)
  if shape == 'cross':
    arm = 0.33 * r
    return ((abs(dx) < arm) & (abs(dy) < r)) | ((abs(dy) < arm) & (abs(dx) < r))
  if shape == 'triangle':       # apex up
    return (dy > -r) & (dy < 0.8 * r) & (abs(dx) < (dy + r) * 0.6)
  raise ValueError(shape)


def _texture_mask(texture: str, yy, xx, period: float, phase):
  stripes = lambda t: ((t + phase) // period) % 2 == 0
  if texture == 'solid':
    return np.ones_like(yy, dtype=bool)
  if texture == 'hstripes':
    return stripes(yy)
  if texture == 'vstripes':
    return stripes(xx)
  return stripes(yy) ^ stripes(xx)


def _colour(rng, avoid=None):
  """A random RGB colour in [0, 1], far enough from `avoid`."""
  for _ in range(20):
    c = rng.uniform(0, 1, 3)
    if avoid is None or np.abs(c - avoid).sum() > 0.6:
      return c
  return 1.0 - avoid


OBJECT_SIZE = (0.16, 0.26)      # an object's radius, as a fraction of the image


def render(label: int, size: int, rng: np.random.Generator,
           object_size: tuple[float, float] = OBJECT_SIZE) -> np.ndarray:
  """One size×size×3 uint8 image of class `label`; a single object's radius
  is drawn from `object_size` × size (two objects: 1.5 times smaller)."""
  shape, texture, count = class_parts(label)
  # Background: a colour, a linear gradient and noise.
  bg = _colour(rng)
  angle = rng.uniform(0, 2 * np.pi)
  axis = np.arange(size, dtype=np.float32) / size
  ramp = np.cos(angle) * axis[:, None] + np.sin(angle) * axis[None, :]
  tint = (0.25 * rng.uniform(-1, 1, 3)).astype(np.float32)
  image = bg.astype(np.float32) + ramp[..., None] * tint
  fill, other = _colour(rng, avoid=bg), _colour(rng, avoid=bg)
  period = rng.uniform(0.05, 0.1) * size
  # Objects stay inside the central 80% so evaluation's 87.5% crop keeps them.
  radius = rng.uniform(*object_size) * size / (1.0 if count == 1 else 1.5)
  centres = []
  for _ in range(count):
    for _ in range(20):
      cy, cx = rng.uniform(0.1 * size + radius, 0.9 * size - radius, 2)
      if all(np.hypot(cy - y, cx - x) > 2.1 * radius for y, x in centres):
        break
    centres.append((cy, cx))
    # Draw inside the object's bounding box only.
    y0, y1 = int(max(cy - radius - 1, 0)), int(min(cy + radius + 2, size))
    x0, x1 = int(max(cx - radius - 1, 0)), int(min(cx + radius + 2, size))
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    obj = _shape_mask(shape, yy - cy, xx - cx, radius)
    tex = np.broadcast_to(_texture_mask(texture, yy, xx, period,
                                        rng.uniform(0, period)), obj.shape)
    patch = image[y0:y1, x0:x1]
    patch[obj & tex] = fill
    patch[obj & ~tex] = other
  noise = rng.integers(-10, 11, image.shape, dtype=np.int8)
  image = np.clip(image * 255 + 0.5, 0, 255).astype(np.int16) + noise
  return np.clip(image, 0, 255).astype(np.uint8)


class SyntheticSource:
  """Random-access source of `num_examples` generated images (Grain source
  protocol: `len()` and `[index]`). Records: {'image': uint8 HWC, 'label'}.

  Drawn images are kept in memory (per process) when they fit in
  `cache_mb`, so later epochs cost no drawing; the cache is not pickled to
  worker processes.
  """

  def __init__(self, *, num_examples: int, num_classes: int, image_size: int,
               seed: int = 0, split: str = 'train', cache_mb: int = 1024,
               object_size: tuple[float, float] = OBJECT_SIZE):
    if not 2 <= num_classes <= MAX_CLASSES:
      raise ValueError(f'the synthetic dataset has 2 to {MAX_CLASSES} classes, '
                       f'got {num_classes}')
    if num_examples < 1 or image_size < 8:
      raise ValueError('synthetic dataset needs num_examples >= 1 and image_size >= 8')
    low, high = object_size
    if not 0.05 <= low <= high <= 0.4:
      raise ValueError(f'object_size must be (low, high) with 0.05 <= low <= high <= 0.4 '
                       f'(a radius the central 80% holds), got {tuple(object_size)}')
    self.object_size = (float(low), float(high))
    self.num_examples, self.num_classes = num_examples, num_classes
    self.image_size, self.seed = image_size, seed
    self.split_id = SPLIT_IDS[split]
    self._cache = {} if num_examples * image_size**2 * 3 <= cache_mb * 2**20 else None

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_cache'] = {} if self._cache is not None else None
    return state

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(index)
    if self._cache is not None and index in self._cache:
      image, label = self._cache[index]
    else:
      rng = np.random.default_rng([self.seed, self.split_id, index])
      label = int(rng.integers(self.num_classes))
      image = render(label, self.image_size, rng, self.object_size)
      if self._cache is not None:
        self._cache[index] = (image, label)
    return {'image': image, 'label': label}

  def __repr__(self):
    return (f'SyntheticSource({self.num_examples} examples, {self.num_classes} '
            f'classes, {self.image_size}px)')
