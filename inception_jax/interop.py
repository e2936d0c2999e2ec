"""Weights in and out of other implementations of the released Inception-v3.

`from_keras` reads a Keras 3 `keras.applications.InceptionV3` (any backend;
only `get_weights()` is used) into our `inception_v3` preset; `to_keras`
writes ours into a new Keras InceptionV3, to serve a trained model with Keras. The two share
the TF-slim topology (Keras's `inception_v3.py` has TF-slim's filter
counts; docs/paper_notes.md#other-implementations), so the 94 ConvBN layers
correspond one to one: Keras creates them in the order our blocks concatenate
their branches, which `layers.iter_layers` reproduces.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np

from inception_jax import models
from inception_jax.layers import ConvBN, iter_layers


def _creation_order(layers, prefix: str):
  """Keras layers named PREFIX, PREFIX_1, PREFIX_2, ... in creation order."""
  pattern = re.compile(rf'^{prefix}(?:_(\d+))?$')
  found = [(int(m.group(1) or 0), l) for l in layers
           if (m := pattern.match(l.name))]
  return [l for _, l in sorted(found, key=lambda t: t[0])]


def _assign(variable, value, where: str):
  value = np.asarray(value)
  current = variable.get_value()
  if current.shape != value.shape:
    raise ValueError(f'{where}: shape {value.shape} does not fit '
                     f'{current.shape}; is this an InceptionV3?')
  variable.set_value(jnp.asarray(value, dtype=current.dtype))


def from_keras(keras_model, *, dtype: str = 'float32') -> models.Inception:
  """Our `inception_v3` (aux head off, same classes) with a Keras InceptionV3's
  weights, in eval mode. The Keras model must include its top
  (`include_top=True`); its classifier activation does not matter."""
  convs = _creation_order(keras_model.layers, 'conv2d')
  norms = _creation_order(keras_model.layers, 'batch_normalization')
  dense = [l for l in keras_model.layers if type(l).__name__ == 'Dense']
  if len(dense) != 1:
    raise ValueError('from_keras needs an InceptionV3 built with include_top=True')
  kernel, bias = dense[0].get_weights()
  height = keras_model.input_shape[1] or 299
  spec = models.preset('inception_v3', aux_head=False,
                       num_classes=kernel.shape[1], dtype=dtype)
  model = models.create(spec, image_size=height)
  ours = [l for l in iter_layers(model) if isinstance(l, ConvBN)]
  if not len(ours) == len(convs) == len(norms):
    raise ValueError(f'expected {len(ours)} Conv2D/BatchNormalization layers, '
                     f'found {len(convs)}/{len(norms)}')
  for layer, conv, norm in zip(ours, convs, norms):
    (k,) = conv.get_weights()
    _assign(layer.conv.kernel, k, conv.name)
    if norm.scale:
      raise ValueError(f'{norm.name} has a scale (gamma); Inception-v3 has none')
    if not np.isclose(norm.epsilon, layer.bn.epsilon):
      raise ValueError(f'{norm.name}: epsilon {norm.epsilon} != {layer.bn.epsilon}')
    beta, mean, var = norm.get_weights()
    _assign(layer.bn.bias, beta, norm.name)
    _assign(layer.bn.mean, mean, norm.name)
    _assign(layer.bn.var, var, norm.name)
  _assign(model.Logits.kernel, kernel, dense[0].name)
  _assign(model.Logits.bias, bias, dense[0].name)
  model.eval()
  return model


def to_keras(model: models.Inception, *, image_size: int = 299):
  """A Keras `InceptionV3` (`include_top=True`, no classifier activation: it
  returns logits, as ours does) holding our `inception_v3`'s weights: the
  inverse of `from_keras`. The auxiliary head, which Keras's model has not,
  is left out; `image_size` is the Keras model's input (≥ 75)."""
  import keras
  ours = [l for l in iter_layers(model) if isinstance(l, ConvBN)]
  kernel = np.asarray(model.Logits.kernel.get_value())
  reference = keras.applications.InceptionV3(
      weights=None, classes=kernel.shape[1], classifier_activation=None,
      input_shape=(image_size, image_size, 3))
  convs = _creation_order(reference.layers, 'conv2d')
  norms = _creation_order(reference.layers, 'batch_normalization')
  if not len(ours) == len(convs) == len(norms):
    raise ValueError(f'to_keras needs the inception_v3 architecture: {len(ours)} '
                     f'ConvBN layers, Keras has {len(convs)}')
  for layer, conv, norm in zip(ours, convs, norms):
    _set(conv, [layer.conv.kernel], conv.name)
    _set(norm, [layer.bn.bias, layer.bn.mean, layer.bn.var], norm.name)
  (dense,) = [l for l in reference.layers if type(l).__name__ == 'Dense']
  _set(dense, [model.Logits.kernel, model.Logits.bias], dense.name)
  return reference


def _set(keras_layer, variables, where: str):
  values = [np.asarray(v.get_value(), np.float32) for v in variables]
  shapes = [w.shape for w in keras_layer.get_weights()]
  if shapes != [v.shape for v in values]:
    raise ValueError(f'{where}: shapes {[v.shape for v in values]} do not fit '
                     f'{shapes}; is this the inception_v3 architecture?')
  keras_layer.set_weights(values)
