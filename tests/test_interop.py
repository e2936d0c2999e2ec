"""Parity with Keras's InceptionV3: every weight randomized, BN statistics
included, transferred with `from_keras`; inference logits must agree."""

import os

import jax
import keras
import numpy as np
import pytest

from inception_jax import interop


def _randomize(model, rng):
  for layer in model.layers:
    for w in layer.weights:
      shape, path = tuple(w.shape), w.path
      if 'moving_variance' in path:
        value = rng.uniform(0.5, 2.0, shape)
      elif any(k in path for k in ('moving_mean', 'beta', 'bias')):
        value = rng.normal(0.0, 0.2, shape)
      else:
        value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
      w.assign(value.astype('float32'))


def test_keras_backend_is_jax():
  assert keras.backend.backend() == 'jax' == os.environ['KERAS_BACKEND']


def test_from_keras_gives_identical_logits():
  reference = keras.applications.InceptionV3(weights=None, classifier_activation=None)
  rng = np.random.default_rng(0)
  _randomize(reference, rng)
  model = interop.from_keras(reference)
  x = rng.uniform(-1, 1, (2, 299, 299, 3)).astype('float32')
  expected = np.asarray(reference(x, training=False))
  got = np.asarray(jax.jit(lambda x: model(x))(x))
  assert got.shape == expected.shape == (2, 1000)
  assert np.abs(expected).max() > 1.0            # the logits are not trivially small
  np.testing.assert_array_less(np.abs(got - expected).max(), 1e-3)


def test_from_keras_rejects_a_headless_model():
  headless = keras.applications.InceptionV3(weights=None, include_top=False,
                                            input_shape=(75, 75, 3))
  with pytest.raises(ValueError, match='include_top=True'):
    interop.from_keras(headless)


def test_to_keras_round_trip_is_exact():
  """Keras → ours → Keras gives back every weight bit for bit, and ours →
  Keras → ours every parameter and statistic (aux head aside)."""
  from flax import nnx

  from inception_jax import models
  reference = keras.applications.InceptionV3(weights=None, classifier_activation=None,
                                             input_shape=(75, 75, 3), classes=7)
  _randomize(reference, np.random.default_rng(1))
  ours = interop.from_keras(reference)
  back = interop.to_keras(ours, image_size=75)
  assert back.count_params() == reference.count_params()
  for a, b in zip(reference.get_weights(), back.get_weights(), strict=True):
    np.testing.assert_array_equal(a, b)
  again = interop.from_keras(back)
  for a, b in zip(jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(again)),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='inception_v3 architecture'):
    interop.to_keras(models.create(models.preset('inception_v2', aux_head=False,
                                                 width_multiplier=0.05, min_depth=4),
                                   image_size=75), image_size=75)
