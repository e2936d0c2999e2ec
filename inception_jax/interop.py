"""Weights in and out of other implementations of the released Inception-v3.

  from_keras(model)          Keras 3 `keras.applications.InceptionV3`
  from_tf_slim(checkpoint)   Google's TF-slim checkpoint (`nets/inception_v3.py`
                             names; the released `inception_v3_2016_08_28`)
  from_torchvision(state)    a torchvision `inception_v3` state dict
  to_keras(model)            ours → a Keras InceptionV3, to serve with Keras

All four share the TF-slim topology (docs/paper_notes.md#other-implementations):
the 94 convolution + BatchNorm layers correspond one to one, and our blocks
concatenate their branches in the released code's order, which
`layers.iter_layers` walks. What differs is naming and two conventions:

- TF-slim's classifier has 1001 outputs, index 0 for "background"; ImageNet
  class k is output k + 1. `from_tf_slim(background='drop')` (the default)
  removes it, leaving the 1000 classes in the synset order of TFDS's
  `imagenet2012`; `'keep'` keeps all 1001.
- torchvision's port has a BatchNorm scale γ and average pooling that counts
  the padded zeros (PyTorch's default). `from_torchvision` builds the model
  with `bn_scale=True` and `avg_pool_include_pad=True`, which reproduce both.
  Its weights expect images in [−1, 1] like ours (torchvision's
  `transform_input=True` converts ImageNet-normalized input to that range).
"""

from __future__ import annotations

import re
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from inception_jax import models
from inception_jax.errors import UserError
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
    if norm.scale:
      raise ValueError(f'{norm.name} has a scale (gamma); Inception-v3 has none')
    if not np.isclose(norm.epsilon, layer.bn.epsilon):
      raise ValueError(f'{norm.name}: epsilon {norm.epsilon} != {layer.bn.epsilon}')
    (k,), (beta, mean, var) = conv.get_weights(), norm.get_weights()
    _load_conv_bn(layer, conv.name, k, bias=beta, mean=mean, var=var)
  _assign(model.Logits.kernel, kernel, dense[0].name)
  _assign(model.Logits.bias, bias, dense[0].name)
  model.eval()
  return model


def _load_conv_bn(layer: ConvBN, where: str, kernel, *, bias, mean=None, var=None,
                  scale=None):
  """One ConvBN from a (kh, kw, in, out) kernel and its BatchNorm's offset,
  moving statistics and scale (or the plain convolution's bias)."""
  _assign(layer.conv.kernel, kernel, where)
  if layer.bn is None:
    _assign(layer.conv.bias, bias, where)
    return
  _assign(layer.bn.bias, bias, where)
  _assign(layer.bn.mean, mean, where)
  _assign(layer.bn.var, var, where)
  if (scale is None) != (layer.bn.scale is None):
    raise ValueError(f'{where}: the source {"has no" if scale is None else "has a"} '
                     f'BatchNorm scale and the model {"has" if scale is None else "has not"}')
  if scale is not None:
    _assign(layer.bn.scale, scale, where)


def _conv_bns(module) -> list[ConvBN]:
  return [l for l in iter_layers(module) if isinstance(l, ConvBN)]


def _named_conv_bns(sequential) -> list[tuple[str, ConvBN]]:
  """The ConvBN layers of a stem or tower with their TF-slim names."""
  return [(n, getattr(sequential, n)) for n in sequential.layer_names
          if isinstance(getattr(sequential, n), ConvBN)]


# --- TF-slim ----------------------------------------------------------------------

BACKGROUND = ('drop', 'keep')


def read_tf_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Every variable of a TensorFlow checkpoint (its prefix, e.g.
  `inception_v3.ckpt`), read with TensorFlow."""
  try:
    import tensorflow as tf
  except ImportError:
    raise UserError('reading a TF-slim checkpoint needs TensorFlow: pip install '
                    'tensorflow-cpu') from None
  try:
    reader = tf.train.load_checkpoint(path)
  except (ValueError, tf.errors.OpError) as e:
    raise UserError(f'cannot read the TensorFlow checkpoint {path!r}: '
                    f'{str(e).splitlines()[0]}') from None
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def from_tf_slim(checkpoint: str | Mapping[str, np.ndarray], *, background: str = 'drop',
                 image_size: int = 299, width_multiplier: float = 1.0,
                 dtype: str = 'float32') -> models.Inception:
  """Our `inception_v3` holding a TF-slim `inception_v3` checkpoint (a path,
  or a mapping of variable names such as `InceptionV3/Mixed_5b/Branch_1/
  Conv2d_0b_5x5/weights` to arrays), in eval mode. The auxiliary head is
  loaded when the checkpoint has one; `width_multiplier` is slim's
  `depth_multiplier`; `background` is the module doc's.

  Within a branch, slim's layer names sort in the order the layers run
  (`Conv2d_0a_1x1` < `Conv2d_0b_1x1` < `Conv_1_0c_5x5`, Mixed_5c's odd name,
  included); every shape is checked."""
  if background not in BACKGROUND:
    raise ValueError(f'background must be one of {BACKGROUND}, got {background!r}')
  variables = (read_tf_checkpoint(checkpoint) if isinstance(checkpoint, str)
               else dict(checkpoint))
  scope = 'InceptionV3/'
  slim = {k[len(scope):]: np.asarray(v) for k, v in variables.items() if k.startswith(scope)}
  if 'Logits/Conv2d_1c_1x1/weights' not in slim:
    raise ValueError('no InceptionV3/Logits/Conv2d_1c_1x1/weights: not a TF-slim '
                     'inception_v3 checkpoint')
  drop = 1 if background == 'drop' else 0
  classes = slim['Logits/Conv2d_1c_1x1/weights'].shape[-1] - drop
  spec = models.preset('inception_v3', num_classes=classes, dtype=dtype,
                       aux_head='AuxLogits/Conv2d_2b_1x1/weights' in slim,
                       width_multiplier=width_multiplier)
  model = models.create(spec, image_size=image_size)

  def conv_bn(layer, name):
    if f'{name}/BatchNorm/gamma' in slim:
      raise ValueError(f'{name} has a BatchNorm scale (gamma); Inception-v3 has none')
    _load_conv_bn(layer, name, slim[f'{name}/weights'],
                  bias=slim[f'{name}/BatchNorm/beta'],
                  mean=slim[f'{name}/BatchNorm/moving_mean'],
                  var=slim[f'{name}/BatchNorm/moving_variance'])

  def head(linear, name, drop):
    kernel, bias = slim[f'{name}/weights'], slim[f'{name}/biases']
    _assign(linear.kernel, kernel.reshape(kernel.shape[-2:])[:, drop:], name)
    _assign(linear.bias, bias[drop:], name)

  for name, layer in _named_conv_bns(model.stem):
    conv_bn(layer, name)
  for block_name in model.block_names:
    for i, branch in enumerate(getattr(model, block_name).sublayers()):
      prefix = f'{block_name}/Branch_{i}/'
      names = sorted({k[:-len('/weights')] for k in slim
                      if k.startswith(prefix) and k.endswith('/weights')})
      ours = _conv_bns(branch)
      if len(names) != len(ours):
        raise ValueError(f'{prefix}: {len(names)} convolutions in the checkpoint, '
                         f'{len(ours)} in inception_v3')
      for layer, name in zip(ours, names):
        conv_bn(layer, name)
  if model.AuxLogits is not None:
    for name, layer in _named_conv_bns(model.AuxLogits.tower):
      conv_bn(layer, f'AuxLogits/{name}')
    head(model.AuxLogits.Logits, 'AuxLogits/Conv2d_2b_1x1', drop)
  head(model.Logits, 'Logits/Conv2d_1c_1x1', drop)
  model.eval()
  return model


# --- torchvision -------------------------------------------------------------------

# torchvision's module names, block by block, in our order (branches as
# concatenated, each branch front to back): `models/inception.py`.
TORCHVISION_BLOCKS = {
    'A': ('branch1x1', 'branch5x5_1', 'branch5x5_2', 'branch3x3dbl_1',
          'branch3x3dbl_2', 'branch3x3dbl_3', 'branch_pool'),
    'B': ('branch3x3', 'branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'),
    'C': ('branch1x1', 'branch7x7_1', 'branch7x7_2', 'branch7x7_3', 'branch7x7dbl_1',
          'branch7x7dbl_2', 'branch7x7dbl_3', 'branch7x7dbl_4', 'branch7x7dbl_5',
          'branch_pool'),
    'D': ('branch3x3_1', 'branch3x3_2', 'branch7x7x3_1', 'branch7x7x3_2',
          'branch7x7x3_3', 'branch7x7x3_4'),
    'E': ('branch1x1', 'branch3x3_1', 'branch3x3_2a', 'branch3x3_2b', 'branch3x3dbl_1',
          'branch3x3dbl_2', 'branch3x3dbl_3a', 'branch3x3dbl_3b', 'branch_pool'),
}
TORCHVISION_KINDS = dict(Mixed_5b='A', Mixed_5c='A', Mixed_5d='A', Mixed_6a='B',
                         Mixed_6b='C', Mixed_6c='C', Mixed_6d='C', Mixed_6e='C',
                         Mixed_7a='D', Mixed_7b='E', Mixed_7c='E')
TORCHVISION_OPTIONS = dict(bn_scale=True, avg_pool_include_pad=True)


def from_torchvision(state_dict: Mapping, *, image_size: int = 299,
                     dtype: str = 'float32') -> models.Inception:
  """Our `inception_v3` with `bn_scale=True, avg_pool_include_pad=True`
  (module doc) holding a torchvision `inception_v3` state dict (tensors or
  arrays; timm's `inception_v3`, derived from torchvision's, keeps its module
  names, but only torchvision's is tested), in eval mode; the
  auxiliary head when the state dict has one."""
  tv = {k: _numpy(v) for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  if 'fc.weight' not in tv:
    raise ValueError('no fc.weight: not a torchvision inception_v3 state dict')
  spec = models.preset('inception_v3', num_classes=tv['fc.weight'].shape[0], dtype=dtype,
                       aux_head='AuxLogits.fc.weight' in tv, **TORCHVISION_OPTIONS)
  model = models.create(spec, image_size=image_size)

  def conv_bn(layer, name):
    if f'{name}.conv.weight' not in tv:
      raise ValueError(f'{name}.conv.weight missing: not a torchvision inception_v3')
    _load_conv_bn(layer, name, tv[f'{name}.conv.weight'].transpose(2, 3, 1, 0),
                  bias=tv[f'{name}.bn.bias'], mean=tv[f'{name}.bn.running_mean'],
                  var=tv[f'{name}.bn.running_var'], scale=tv[f'{name}.bn.weight'])

  def head(linear, name):
    _assign(linear.kernel, tv[f'{name}.weight'].T, name)
    _assign(linear.bias, tv[f'{name}.bias'], name)

  names = [n for n, _ in _named_conv_bns(model.stem)]
  names += [f'{block}.{branch}' for block in model.block_names
                  for branch in TORCHVISION_BLOCKS[TORCHVISION_KINDS[block]]]
  ours = _conv_bns(model.stem) + [l for b in model.block_names
                                  for l in _conv_bns(getattr(model, b))]
  for layer, name in zip(ours, names, strict=True):
    conv_bn(layer, name)
  if model.AuxLogits is not None:
    for layer, name in zip(_conv_bns(model.AuxLogits.tower), ('conv0', 'conv1'), strict=True):
      conv_bn(layer, f'AuxLogits.{name}')
    head(model.AuxLogits.Logits, 'AuxLogits.fc')
  head(model.Logits, 'fc')
  model.eval()
  return model


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
  """A state dict saved by `torch.save(model.state_dict(), path)` (tensors
  only: loaded with `weights_only=True`), as numpy arrays."""
  try:
    import torch
  except ImportError:
    raise UserError('reading a PyTorch state dict needs PyTorch: pip install torch') from None
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except (OSError, RuntimeError, ValueError) as e:
    raise UserError(f'cannot read the PyTorch file {str(path)!r}: '
                    f'{str(e).splitlines()[0]}') from None
  if not isinstance(loaded, Mapping):
    raise UserError(f'{path} holds a {type(loaded).__name__}, not a state dict: save '
                    f'model.state_dict()')
  return {k: _numpy(v) for k, v in loaded.items()}


def _numpy(value) -> np.ndarray:
  """A torch tensor (any device) or array as a numpy array."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


# --- Keras out ----------------------------------------------------------------------

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
