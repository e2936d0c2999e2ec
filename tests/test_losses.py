"""Label-smoothed cross entropy and the main + 0.4·aux loss against closed forms
written out in numpy, and against TensorFlow's `softmax_cross_entropy`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inception_jax import losses


def numpy_smoothed_ce(logits, labels, eps):
  """−Σ_k q′(k) log softmax(z)_k, q′ = (1 − ε)·δ_ky + ε/K (Section 7), float64."""
  z = np.asarray(logits, np.float64)
  k = z.shape[-1]
  log_p = z - z.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  q = np.full(z.shape, eps / k)
  np.put_along_axis(q, np.asarray(labels)[..., None], 1 - eps + eps / k, axis=-1)
  return -(q * log_p).sum(-1)


def data(batch=8, classes=11, seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=(batch, classes))).astype(np.float32)
  aux = (scale * rng.normal(size=(batch, classes))).astype(np.float32)
  labels = rng.integers(0, classes, size=batch)
  return logits, aux, labels


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.35])
@pytest.mark.parametrize('classes', [5, 1001])
def test_smoothed_cross_entropy_closed_form(eps, classes):
  logits, _, labels = data(classes=classes)
  got = losses.smoothed_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)
  assert got.shape == (8,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, numpy_smoothed_ce(logits, labels, eps), rtol=1e-5)


def test_smoothing_is_the_papers_mixture_of_two_cross_entropies():
  """Section 7: H(q′, p) = (1 − ε)·H(q, p) + ε·H(u, p)."""
  logits, _, labels = data(batch=6, classes=7, seed=1)
  eps = 0.1
  plain = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  uniform = -jax.nn.log_softmax(logits).mean(-1)
  got = losses.smoothed_cross_entropy(logits, labels, eps)
  np.testing.assert_allclose(got, (1 - eps) * plain + eps * uniform, rtol=1e-5)
  assert np.all(np.abs(got - plain) > 1e-3)  # smoothing changed every example


def test_leading_batch_dims_and_low_precision_logits():
  logits, _, labels = data(batch=6, classes=9, seed=2)
  logits, labels = logits.reshape(2, 3, 9), labels.reshape(2, 3)
  low = jnp.asarray(logits, jnp.bfloat16)
  got = losses.smoothed_cross_entropy(low, labels, 0.1)
  assert got.shape == (2, 3) and got.dtype == jnp.float32
  want = numpy_smoothed_ce(np.asarray(low.astype(jnp.float32)), labels, 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_matches_tensorflow_softmax_cross_entropy():
  """Google's loss: tf.losses.softmax_cross_entropy(onehot, logits, label_smoothing)."""
  import tensorflow as tf
  logits, _, labels = data(classes=13, seed=3)
  want = tf.compat.v1.losses.softmax_cross_entropy(
      tf.one_hot(labels, 13), logits, label_smoothing=0.1,
      reduction=tf.compat.v1.losses.Reduction.NONE).numpy()
  np.testing.assert_allclose(losses.smoothed_cross_entropy(logits, labels, 0.1), want,
                             rtol=1e-5)


def test_inception_loss_weights_the_aux_head():
  logits, aux, labels = data(seed=4)
  total, parts = losses.inception_loss(logits, aux, labels)  # ε = 0.1, weight 0.4
  main = numpy_smoothed_ce(logits, labels, 0.1).mean()
  aux_loss = numpy_smoothed_ce(aux, labels, 0.1).mean()
  assert set(parts) == {'loss', 'main_loss', 'aux_loss'}
  assert float(parts['main_loss']) == pytest.approx(main, rel=1e-5)
  assert float(parts['aux_loss']) == pytest.approx(aux_loss, rel=1e-5)
  assert float(total) == pytest.approx(main + 0.4 * aux_loss, rel=1e-5)
  assert float(parts['loss']) == float(total)
  heavier, _ = losses.inception_loss(logits, aux, labels, aux_weight=1.0, smoothing=0.0)
  assert float(heavier) == pytest.approx(numpy_smoothed_ce(logits, labels, 0.0).mean() +
                                         numpy_smoothed_ce(aux, labels, 0.0).mean(), rel=1e-5)


def test_inception_loss_without_aux_head():
  logits, _, labels = data(seed=5)
  total, parts = losses.inception_loss(logits, None, labels, smoothing=0.2)
  assert set(parts) == {'loss', 'main_loss'}
  assert float(total) == pytest.approx(numpy_smoothed_ce(logits, labels, 0.2).mean(), rel=1e-5)


def test_mask_averages_over_real_examples_only():
  logits, aux, labels = data(batch=8, seed=6)
  real = 5
  mask = np.array([1] * real + [0] * (8 - real))
  # Padding rows hold garbage that must not leak into the loss.
  logits[real:], aux[real:] = 1e4, -1e4
  loss = jax.jit(lambda *a: losses.inception_loss(*a[:3], mask=a[3]))
  total, parts = loss(logits, aux, labels, mask)
  want_main = numpy_smoothed_ce(logits[:real], labels[:real], 0.1).mean()
  want_aux = numpy_smoothed_ce(aux[:real], labels[:real], 0.1).mean()
  assert float(parts['main_loss']) == pytest.approx(want_main, rel=1e-5)
  assert float(parts['aux_loss']) == pytest.approx(want_aux, rel=1e-5)
  assert float(total) == pytest.approx(want_main + 0.4 * want_aux, rel=1e-5)
  unmasked, _ = losses.inception_loss(logits, aux, labels)
  assert abs(float(unmasked) - float(total)) > 1.0
  empty, _ = loss(logits, aux, labels, np.zeros(8))
  assert float(empty) == 0.0
