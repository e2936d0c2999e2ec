"""Parity with the other implementations of Inception-v3 — Keras's
InceptionV3, Google's TF-slim `nets/inception_v3.py` (run by TensorFlow) and
torchvision's `inception_v3` (run by PyTorch): every weight randomized, BN
statistics included, transferred by `interop`; inference logits must agree."""

import os

import jax
import keras
import numpy as np
import pytest

from inception_jax import interop


def _random_value(name: str, shape, rng) -> np.ndarray:
  """A random value for the variable `name` (Keras's or TF-slim's naming):
  moving variances in [0.5, 2], means, offsets and biases around 0, kernels
  He-normal."""
  if 'moving_variance' in name:
    value = rng.uniform(0.5, 2.0, shape)
  elif any(k in name for k in ('moving_mean', 'beta', 'bias')):     # 'bias', 'biases'
    value = rng.normal(0.0, 0.2, shape)
  else:
    value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
  return value.astype('float32')


def _randomize(model, rng):
  for layer in model.layers:
    for w in layer.weights:
      w.assign(_random_value(w.path, tuple(w.shape), rng))


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


def _slim_checkpoint(path, images, rng, depth_multiplier):
  """Google's TF-slim Inception-v3 (the `tf_slim` package's `nets/inception_v3.py`,
  1001 classes) with random weights and BatchNorm statistics, saved by
  TensorFlow as a checkpoint at `path`; returns its (logits, aux logits)."""
  import tensorflow as tf
  from tensorflow.python.framework import ops
  # tf_slim 1.1.0, its last release, names `ops.Tensor`, which TensorFlow 2.21
  # keeps as `tf.Tensor` only.
  if not hasattr(ops, 'Tensor'):
    ops.Tensor = tf.Tensor
  import tf_slim as slim
  from tf_slim.nets import inception_v3
  with tf.Graph().as_default():
    x = tf.compat.v1.placeholder(tf.float32, images.shape)
    # Another update collection than UPDATE_OPS keeps slim's own BatchNorm
    # (its Keras-backed one needs tf_keras); in inference both are the same.
    with slim.arg_scope(inception_v3.inception_v3_arg_scope(updates_collections='bn')):
      logits, ends = inception_v3.inception_v3(x, num_classes=1001, is_training=False,
                                               depth_multiplier=depth_multiplier)
    with tf.compat.v1.Session() as session:
      for v in tf.compat.v1.global_variables():
        v.load(_random_value(v.name, v.shape.as_list(), rng), session)
      expected = session.run([logits, ends['AuxLogits']], {x: images})
      tf.compat.v1.train.Saver().save(session, path)
  return expected


def test_from_tf_slim_matches_tf_slim(tmp_path):
  """A TF-slim checkpoint written by TensorFlow: our logits and auxiliary
  logits equal slim's, all 1001 with background='keep' and slim's outputs
  1…1000 with 'drop'."""
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 299, 299, 3)).astype('float32')
  path = str(tmp_path / 'inception_v3.ckpt')
  logits, aux = _slim_checkpoint(path, images, rng, depth_multiplier=0.25)
  assert logits.shape == aux.shape == (2, 1001) and np.abs(logits).max() > 1.0
  model = interop.from_tf_slim(path, background='keep', width_multiplier=0.25)
  got, got_aux = jax.jit(lambda x: model(x, return_aux=True))(images)
  np.testing.assert_array_less(np.abs(np.asarray(got) - logits).max(), 1e-3)
  np.testing.assert_array_less(np.abs(np.asarray(got_aux) - aux).max(), 1e-3)
  dropped = interop.from_tf_slim(path, width_multiplier=0.25)
  assert dropped.Logits.kernel.shape[-1] == 1000
  np.testing.assert_array_less(np.abs(np.asarray(dropped(images)) - logits[:, 1:]).max(),
                               1e-3)
  with pytest.raises(ValueError, match='does not fit'):      # another width
    interop.from_tf_slim(path, width_multiplier=0.5)


def test_from_tf_slim_errors(tmp_path):
  from inception_jax.errors import UserError
  with pytest.raises(UserError, match='cannot read the TensorFlow checkpoint'):
    interop.from_tf_slim(str(tmp_path / 'missing.ckpt'))
  with pytest.raises(ValueError, match='not a TF-slim inception_v3 checkpoint'):
    interop.from_tf_slim({'InceptionV1/Logits/Conv2d_0c_1x1/weights': np.zeros((1, 1, 4, 2))})


# PyTorch's side runs in a process of its own: torchvision imports triton,
# whose LLVM crashes a process that has loaded TensorFlow (as Keras does here).
TORCHVISION_REFERENCE = """
import sys
import numpy as np, torch, torchvision
torch.manual_seed(0)
rng = np.random.default_rng(0)
reference = torchvision.models.inception_v3(weights=None, init_weights=True,
                                            aux_logits=True, num_classes=17)
norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
tensor = lambda a: torch.from_numpy(np.asarray(a, np.float32))
with torch.no_grad():
  # Statistics near a batch's (momentum 1 keeps the last batch's), then moved:
  # the activations stay in range through all 96 layers.
  for m in norms:
    m.momentum = 1.0
  reference.train()
  reference(tensor(rng.uniform(-1, 1, (4, 3, 299, 299))))
  for m in norms:
    std = m.running_var.sqrt()
    m.running_mean += tensor(rng.normal(0, 0.2, std.shape)) * std
    m.running_var *= tensor(rng.uniform(0.5, 2.0, std.shape))
    m.weight.copy_(tensor(rng.uniform(0.5, 1.5, std.shape)))
    m.bias.copy_(tensor(rng.normal(0, 0.2, std.shape)))
  reference.fc.weight.mul_(0.1)
reference.eval()
captured = {}
reference.Mixed_6e.register_forward_hook(lambda m, i, out: captured.update(x=out))
images = rng.uniform(-1, 1, (2, 299, 299, 3)).astype('float32')
view = np.load(sys.argv[1] + '/view.npy')[None]      # a photo through the eval crop
with torch.no_grad():
  logits = reference(tensor(images.transpose(0, 3, 1, 2))).numpy()
  aux = reference.AuxLogits(captured['x']).numpy()
  photo = torch.softmax(reference(tensor(view.transpose(0, 3, 1, 2))), -1).numpy()[0]
torch.save(reference.state_dict(), sys.argv[1] + '/inception_v3.pt')
np.savez(sys.argv[1] + '/expected.npz', images=images, logits=logits, aux=aux, photo=photo)
"""


def test_from_torchvision_matches_torchvision(tmp_path):
  """torchvision's inception_v3 (its own initialisation, random BatchNorm
  scales, offsets and statistics), saved by PyTorch: our logits and auxiliary
  logits (the model with `bn_scale` and `avg_pool_include_pad`) equal its own."""
  import subprocess
  import sys

  from PIL import Image

  from inception_jax import evaluate
  from inception_jax.data import preprocess
  photo = tmp_path / 'photo.png'
  pixels = np.random.default_rng(1).integers(0, 256, (240, 320, 3), np.uint8)
  Image.fromarray(pixels).save(photo)
  np.save(tmp_path / 'view.npy', preprocess.eval_image(photo.read_bytes(),
                                                       preprocess.Options(image_size=299)))
  done = subprocess.run([sys.executable, '-c', TORCHVISION_REFERENCE, str(tmp_path)],
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  expected = np.load(tmp_path / 'expected.npz')
  logits, aux = expected['logits'], expected['aux']
  assert logits.shape == aux.shape == (2, 17)
  assert np.abs(logits).max() > 1.0 and np.abs(aux).max() > 1e-3
  model = interop.from_torchvision(interop.read_torch_state_dict(tmp_path / 'inception_v3.pt'))
  assert model.Mixed_5b.branch_1x1.Conv2d_0a_1x1.bn.scale is not None
  got, got_aux = jax.jit(lambda x: model(x, return_aux=True))(expected['images'])
  np.testing.assert_array_less(np.abs(np.asarray(got) - logits).max(), 1e-3)
  np.testing.assert_array_less(np.abs(np.asarray(got_aux) - aux).max(), 1e-3)
  # `predict --weights FILE.pt`: the same top-5 and probabilities as PyTorch's
  # softmax of the photo's evaluation crop, named from a labels file.
  (tmp_path / 'labels.txt').write_text(''.join(f'label{i}\n' for i in range(17)))
  (predicted,) = evaluate.predict(None, [str(photo)], weights=str(tmp_path / 'inception_v3.pt'),
                                  labels=str(tmp_path / 'labels.txt'))
  named = [int(name[len('label'):]) for name in predicted['classes']]
  np.testing.assert_allclose(predicted['probabilities'], expected['photo'][named], atol=1e-5)
  sixth = np.sort(expected['photo'])[-6]        # the five most probable (up to ties)
  assert min(predicted['probabilities']) >= sixth - 1e-5
  assert np.ptp(expected['photo']) > 0.01       # not a flat distribution
