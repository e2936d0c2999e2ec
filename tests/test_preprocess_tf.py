"""Google's Inception preprocessing against TensorFlow's own ops: the
distorted-bounding-box sampler (`tf.image.sample_distorted_bounding_box`)
and the colour distortion (`tf.image.adjust_*`, `random_*`)."""

import numpy as np
import pytest
import tensorflow as tf     # the reference (requirements-test.txt)
from scipy import stats

from inception_jax.data import preprocess

HEIGHT, WIDTH = 240, 320
DRAWS = 3000
# Kolmogorov–Smirnov: the same distribution gives p < 1e-3 once in a thousand
# seeds; the draws are seeded, so the outcome is fixed. The sampler this
# replaced (area uniform in [0.05, 1]) gives p < 1e-30 on the area.
P_MIN = 1e-3


def _tf_boxes(draws=DRAWS):
  boxes = []
  for i in range(draws):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        [HEIGHT, WIDTH, 3], bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=[i, 7], min_object_covered=0.1, aspect_ratio_range=[3 / 4, 4 / 3],
        area_range=[0.05, 1.0], max_attempts=100, use_image_if_no_bounding_boxes=True)
    boxes.append((int(begin[0]), int(begin[1]), int(size[0]), int(size[1])))
  return np.array(boxes)


def _our_boxes(sampler, draws=DRAWS):
  opts = preprocess.Options(image_size=299, crop_sampler=sampler,
                            crop_attempts=100 if sampler == 'tensorflow' else 10)
  rng = np.random.default_rng(0)
  return np.array([preprocess.sample_crop(rng, HEIGHT, WIDTH, opts) for _ in range(draws)])


def _features(boxes):
  top, left, h, w = boxes.T.astype(float)
  return {'area': h * w / (HEIGHT * WIDTH), 'aspect': w / h,
          'top': top / HEIGHT, 'left': left / WIDTH}


@pytest.fixture(scope='module')
def tf_boxes():
  return _tf_boxes()


def test_crop_sampler_draws_tensorflows_distribution(tf_boxes):
  mine, theirs = _features(_our_boxes('tensorflow')), _features(tf_boxes)
  for name in mine:
    p = stats.ks_2samp(mine[name], theirs[name]).pvalue
    assert p > P_MIN, f'{name}: KS p = {p:.2g}'
  # And the properties that make it TensorFlow's: nothing below 10% of the
  # image (min_object_covered), the last offset never drawn.
  assert mine['area'].min() >= 0.1 and theirs['area'].min() >= 0.1
  for boxes in (_our_boxes('tensorflow'), tf_boxes):
    for start, size, full in ((0, 2, HEIGHT), (1, 3, WIDTH)):
      partial = boxes[:, size] < full
      assert (boxes[partial, start] + boxes[partial, size] < full).all()


def test_the_uniform_area_sampler_is_told_apart(tf_boxes):
  """The KS test has the power to see the difference that matters."""
  p = stats.ks_2samp(_features(_our_boxes('uniform_area'))['area'],
                     _features(tf_boxes)['area']).pvalue
  assert p < 1e-10


@pytest.mark.parametrize('op, tf_op, value', [
    (preprocess.adjust_saturation, 'adjust_saturation', 1.4),
    (preprocess.adjust_saturation, 'adjust_saturation', 0.6),
    (preprocess.adjust_hue, 'adjust_hue', 0.17),
    (preprocess.adjust_hue, 'adjust_hue', -0.2),
    (preprocess.adjust_contrast, 'adjust_contrast', 0.55),
])
def test_colour_ops_are_tensorflows(op, tf_op, value):
  x = np.random.default_rng(1).uniform(0, 1, (24, 24, 3)).astype(np.float32)
  np.testing.assert_allclose(op(x, value), getattr(tf.image, tf_op)(x, value).numpy(),
                             atol=2e-5)


def _tf_distort(x, i):
  """Google's `distort_color` (its two orders by thread; here by draw)."""
  seeds = [[i, k] for k in range(4)]
  image = tf.constant(x)
  brightness = lambda im: tf.image.stateless_random_brightness(im, 32 / 255, seeds[0])
  saturation = lambda im: tf.image.stateless_random_saturation(im, 0.5, 1.5, seeds[1])
  hue = lambda im: tf.image.stateless_random_hue(im, 0.2, seeds[2])
  contrast = lambda im: tf.image.stateless_random_contrast(im, 0.5, 1.5, seeds[3])
  order = ((brightness, saturation, hue, contrast) if i % 2 == 0 else
           (brightness, contrast, saturation, hue))
  for op in order:
    image = op(image)
  return tf.clip_by_value(image, 0.0, 1.0).numpy()


def test_colour_distortion_draws_tensorflows_distribution():
  """Per-image channel means and spreads after `distort_color`, ours and
  TensorFlow's, over 600 draws of one image each."""
  x = np.random.default_rng(2).uniform(0.1, 0.9, (16, 16, 3)).astype(np.float32)
  x[..., 0] *= 0.5                                  # a coloured image: hue matters
  rng = np.random.default_rng(3)
  mine = np.array([preprocess.distort_color(x, rng) for _ in range(600)])
  theirs = np.array([_tf_distort(x, i) for i in range(600)])
  for name, f in (('mean', lambda a: a.mean((1, 2))), ('std', lambda a: a.std((1, 2)))):
    for c in range(3):
      p = stats.ks_2samp(f(mine)[:, c], f(theirs)[:, c]).pvalue
      assert p > P_MIN, f'channel {c} {name}: KS p = {p:.2g}'
