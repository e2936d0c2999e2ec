"""Layers shared by every block: ConvBN, pooling, and the two containers.

Conventions follow TF-slim's `inception_arg_scope`
(docs/paper_notes.md#batchnorm-conventions): convolutions have no bias,
BatchNorm has a learned offset but no scale (epsilon 0.001, moving-average
decay 0.9997), ReLU follows. Average pooling with SAME padding
divides by the number of real pixels in the window, as TensorFlow does, so
imported weights give identical outputs. Two options give torchvision's
port instead (`interop.from_torchvision`): a BatchNorm scale (γ) and
average pooling that counts the padded zeros.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from inception_jax import convolution

ACTIVATIONS = ('relu', 'linear')
PADDINGS = ('SAME', 'VALID')

he_normal = nnx.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


def param_dtype(dtype) -> Any:
  """Parameters and BatchNorm statistics are float32 (for float32 and bfloat16
  compute), or float64 when the compute dtype is float64: exact numerical
  checks, such as comparing device counts, need no float32 rounding anywhere."""
  return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def _pair(k) -> tuple[int, int]:
  return (k, k) if isinstance(k, int) else tuple(k)


def _out_size(size: int, window: int, stride: int, padding: str) -> int:
  """Spatial output size of a window op (TensorFlow's SAME/VALID rules)."""
  if padding == 'SAME':
    return -(-size // stride)
  return (size - window) // stride + 1


class BatchNorm(nnx.Module):
  """Batch normalization with a learned offset and no scale (TF-slim's
  `batch_norm(scale=False)`): statistics in float32 (float64 for float64
  compute, see `param_dtype`), moving averages with
  decay `momentum` (0.9997) of the batch mean and (biased) variance.

  `scale=True` adds a learned scale γ (torchvision's and Keras's default;
  TF-slim's Inception has none).

  `group_size` > 0 is ghost BatchNorm: each group of that many consecutive
  examples is normalized with its own statistics, which reproduces the
  paper's per-replica statistics (batch 32 on each of 50 replicas) under
  one global jit. The moving averages take one update per step with the
  mean of the group statistics, or, with `update_per_group`, one update per
  group in order — what the paper's replicas did, each applying the decay to
  its own batch (`moving_update`).
  """

  def __init__(self, num_features: int, *, momentum: float = 0.9997,
               epsilon: float = 1e-3, group_size: int = 0,
               update_per_group: bool = False, scale: bool = False,
               dtype: Any = jnp.float32, use_running_average: bool = False):
    stat_dtype = param_dtype(dtype)
    self.scale = nnx.Param(jnp.ones((num_features,), stat_dtype)) if scale else None
    self.bias = nnx.Param(jnp.zeros((num_features,), stat_dtype))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), stat_dtype))
    self.var = nnx.BatchStat(jnp.ones((num_features,), stat_dtype))
    self.momentum, self.epsilon, self.group_size = momentum, epsilon, group_size
    self.update_per_group = update_per_group
    self.dtype, self.use_running_average = dtype, use_running_average

  def __call__(self, x):
    bias = self.bias[...]
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
      y = (x.astype(mean.dtype) - mean) * self._inverse_std(var) + bias
      return y.astype(self.dtype)
    batch, groups = x.shape[0], 1
    if 0 < self.group_size < batch:
      if batch % self.group_size:
        raise ValueError(f'batch {batch} is not a multiple of bn_group_size '
                         f'{self.group_size}')
      groups = batch // self.group_size
    xg = x.astype(bias.dtype).reshape(groups, batch // groups, *x.shape[1:])
    axes = tuple(range(1, xg.ndim - 1))
    mean = xg.mean(axis=axes, keepdims=True)
    # Two-pass variance: E[x²] − E[x]² cancels badly when |mean| ≫ std.
    var = jnp.square(xg - mean).mean(axis=axes, keepdims=True)
    y = (xg - mean) * self._inverse_std(var) + bias
    # set_value, not `[...] =`: the latter compares shardings, which costs a
    # formatted error message per statistic while tracing.
    for moving, stat in ((self.mean, mean), (self.var, var)):
      moving.set_value(moving_update(moving[...], stat.reshape(groups, -1),
                                     self.momentum, self.update_per_group))
    return y.reshape(x.shape).astype(self.dtype)

  def _inverse_std(self, var):
    inverse = jax.lax.rsqrt(var + self.epsilon)
    return inverse if self.scale is None else inverse * self.scale[...]


def moving_update(moving, stats, momentum: float, per_group: bool = False):
  """The moving average after a step whose G groups had statistics `stats`
  (G, C), in order.

  Mean: m·v + (1 − m)·mean_i s_i — one update per step.
  Per group: v ← m·v + (1 − m)·s_i for i = 1…G, i.e.
  m^G·v + (1 − m)·Σ_i m^(G−i)·s_i — the paper's 50 replicas each updating the
  shared averages with their own batch of 32, so that decay 0.9997 per update
  is 0.9997^50 ≈ 0.985 per step: the averages follow the last ~70 steps
  instead of the last ~3,300.
  """
  g = stats.shape[0]
  if not per_group:
    return momentum * moving + (1 - momentum) * stats.mean(0)
  weights = (1 - momentum) * momentum ** np.arange(g - 1, -1, -1, dtype=np.float64)
  return momentum ** g * moving + jnp.tensordot(weights.astype(moving.dtype), stats, 1)


class Dropout(nnx.Module):
  """Dropout (`rate` of the units zeroed, the rest scaled by 1/(1 − rate)),
  drawing the same mask as `nnx.Dropout` from the same key.

  `rows=(start, total)` says that `x` holds rows start… of a batch of `total`
  rows (a micro-batch of gradient accumulation): the mask is drawn for the
  whole batch and these rows are kept, so a split batch drops exactly the
  units that one large step would. `model.eval()` turns it off.
  """

  def __init__(self, rate: float):
    self.rate, self.deterministic = rate, False

  def __call__(self, x, *, rngs=None, rows=None):
    if self.deterministic or self.rate == 0:
      return x
    if rngs is None:
      raise ValueError('Dropout in train mode needs a key (rngs=...)')
    if isinstance(rngs, nnx.Rngs):          # a key from its dropout (or default) stream
      rngs = rngs.dropout()
    elif isinstance(rngs, nnx.RngStream):
      rngs = rngs()
    keep = 1.0 - self.rate
    if rows is None:
      mask = jax.random.bernoulli(rngs, keep, x.shape)
    else:
      start, total = rows
      mask = jax.random.bernoulli(rngs, keep, (total, *x.shape[1:]))
      mask = jax.lax.dynamic_slice_in_dim(mask, start, x.shape[0])
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


# --- Convolution ----------------------------------------------------------------

class ConvBN(nnx.Module):
  """Convolution (no bias) → BatchNorm (offset only) → ReLU or identity.

  `activation='linear'` drops the ReLU (Section 3.1's linear-factorization
  study). `norm=False` gives a plain convolution with bias, used for the
  non-batch-normalized auxiliary "FC" layer of Inception-v2 (Fig. 8).
  `conv_impl` is how the product is computed (`convolution.conv2d`: 'xla',
  or 'cpu_matmul', XLA:CPU's faster forms; `model.conv_impl`): the same
  parameters, the same values up to float rounding.
  """

  def __init__(self, in_features: int, out_features: int, kernel, *,
               stride: int = 1, padding: str = 'SAME',
               activation: str = 'relu', norm: bool = True,
               kernel_init: Callable = he_normal, dtype: Any = jnp.float32,
               bn_momentum: float = 0.9997, bn_epsilon: float = 1e-3,
               bn_group_size: int = 0, bn_update_per_group: bool = False,
               bn_scale: bool = False, conv_impl: str = 'xla', rngs: nnx.Rngs):
    if activation not in ACTIVATIONS:
      raise ValueError(f'activation must be one of {ACTIVATIONS}, got {activation!r}')
    if padding not in PADDINGS:
      raise ValueError(f'padding must be one of {PADDINGS}, got {padding!r}')
    if conv_impl not in convolution.IMPLS:
      raise ValueError(f'conv_impl must be one of {convolution.IMPLS} (resolve '
                       f"'auto' first: convolution.resolve), got {conv_impl!r}")
    self.conv_impl = conv_impl
    self.kernel_size = _pair(kernel)
    self.stride = stride
    self.padding = padding
    self.activation = activation
    self.in_features = in_features
    self.out_features = out_features
    self.conv = nnx.Conv(in_features, out_features, self.kernel_size,
                         strides=stride, padding=padding, use_bias=not norm,
                         kernel_init=kernel_init, dtype=dtype,
                         param_dtype=param_dtype(dtype), rngs=rngs)
    self.bn = BatchNorm(out_features, momentum=bn_momentum, epsilon=bn_epsilon,
                        group_size=bn_group_size, update_per_group=bn_update_per_group,
                        scale=bn_scale, dtype=dtype) if norm else None

  def __call__(self, x):
    conv = self.conv                # its parameters; the product is `conv2d`'s
    x, kernel = x.astype(conv.dtype), conv.kernel[...].astype(conv.dtype)
    x = convolution.conv2d(x, kernel, self.stride, self.padding, self.conv_impl)
    if conv.bias is not None:
      x = x + conv.bias[...].astype(conv.dtype)
    if self.bn is not None:
      x = self.bn(x)
    return jax.nn.relu(x) if self.activation == 'relu' else x

  def out_size(self, size: int) -> int:
    return min(_out_size(size, k, self.stride, self.padding)
               for k in self.kernel_size)


def avg_pool(x, window: int, stride: int = 1, padding: str = 'SAME',
             include_pad: bool = False):
  """Average pooling. With SAME padding the padded zeros are left out of the
  mean (TensorFlow), or counted (`include_pad`: PyTorch's default, which
  torchvision's Inception-v3 uses)."""
  return nnx.avg_pool(x, (window, window), strides=(stride, stride),
                      padding=padding, count_include_pad=include_pad)


def max_pool(x, window: int, stride: int = 1, padding: str = 'VALID'):
  return nnx.max_pool(x, (window, window), strides=(stride, stride),
                      padding=padding)


class Pool(nnx.Module):
  """A parameter-free max or average pooling layer that knows its output size."""

  def __init__(self, kind: str, window: int, stride: int, padding: str,
               in_features: int, include_pad: bool = False):
    if kind not in ('max', 'avg'):
      raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
    self.kind, self.window, self.stride, self.padding = kind, window, stride, padding
    self.include_pad = include_pad      # average pooling: count SAME's zeros
    self.in_features = self.out_features = in_features

  def __call__(self, x):
    if self.kind == 'max':
      return max_pool(x, self.window, self.stride, self.padding)
    return avg_pool(x, self.window, self.stride, self.padding, self.include_pad)

  def out_size(self, size: int) -> int:
    return _out_size(size, self.window, self.stride, self.padding)


class Sequential(nnx.Module):
  """Named layers applied in order (a stem, or one branch of a block)."""

  def __init__(self, **layers: nnx.Module):
    if not layers:
      raise ValueError('Sequential needs at least one layer')
    self.layer_names = tuple(layers)
    for name, layer in layers.items():
      setattr(self, name, layer)
    first, last = layers[self.layer_names[0]], layers[self.layer_names[-1]]
    self.in_features, self.out_features = first.in_features, last.out_features

  def sublayers(self) -> list[nnx.Module]:
    return [getattr(self, n) for n in self.layer_names]

  def __call__(self, x):
    for layer in self.sublayers():
      x = layer(x)
    return x

  def out_size(self, size: int) -> int:
    for layer in self.sublayers():
      size = layer.out_size(size)
    return size


class Parallel(nnx.Module):
  """Named branches applied to the same input; outputs concatenated on channels.

  Every Inception block is one of these: its branches are named like the
  paper's figures and concatenated in the released code's order.
  """

  def __init__(self, **branches: nnx.Module):
    if not branches:
      raise ValueError('Parallel needs at least one branch')
    self.branch_names = tuple(branches)
    for name, branch in branches.items():
      setattr(self, name, branch)
    self.in_features = branches[self.branch_names[0]].in_features
    self.out_features = sum(b.out_features for b in branches.values())

  def sublayers(self) -> list[nnx.Module]:
    return [getattr(self, n) for n in self.branch_names]

  def __call__(self, x):
    return jnp.concatenate([b(x) for b in self.sublayers()], axis=-1)

  def out_size(self, size: int) -> int:
    sizes = {b.out_size(size) for b in self.sublayers()}
    if len(sizes) != 1:
      raise ValueError(f'branches of {type(self).__name__} disagree on the '
                       f'output grid: {sorted(sizes)}')
    return sizes.pop()


# --- Layer specs: what a block's branches are made of -----------------------

@dataclasses.dataclass(frozen=True)
class Conv:
  """A ConvBN to build: `features` is the full-width count, before the width
  multiplier. `factorized=True` marks the first layer of a factorized pair,
  whose activation is the model's `factorized_activation` (Section 3.1)."""
  features: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: str = 'SAME'
  factorized: bool = False
  norm: bool = True
  kernel_init: Callable = he_normal
  name: str | None = None


@dataclasses.dataclass(frozen=True)
class PoolSpec:
  kind: str
  window: int
  stride: int = 1
  padding: str = 'SAME'
  name: str | None = None


def conv(features, kernel, stride=1, padding='SAME', **kw) -> Conv:
  return Conv(features, kernel, stride, padding, **kw)


def maxpool(window=3, stride=2, padding='VALID') -> PoolSpec:
  return PoolSpec('max', window, stride, padding)


def avgpool(window=3, stride=1, padding='SAME') -> PoolSpec:
  return PoolSpec('avg', window, stride, padding)


@dataclasses.dataclass(frozen=True)
class Builder:
  """Everything a block needs to build its layers: widths, dtype, BN settings,
  the Section 3.1 activation choice, the asymmetric factorization size n, how
  convolutions are computed (`conv_impl`, resolved: 'xla' or 'cpu_matmul'),
  and the random stream for initialisers. Passed to block constructors, not
  stored.
  """
  rngs: nnx.Rngs
  width_multiplier: float = 1.0
  min_depth: int = 16
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9997
  bn_epsilon: float = 1e-3
  bn_group_size: int = 0
  bn_update_per_group: bool = False
  bn_scale: bool = False
  avg_pool_include_pad: bool = False
  factorized_activation: str = 'relu'
  factorization_n: int = 7
  inception_a: str = 'released'
  conv_impl: str = 'xla'

  def depth(self, features: int) -> int:
    """TF-slim's depth multiplier: max(int(d * multiplier), min_depth)."""
    return max(int(features * self.width_multiplier), self.min_depth)

  def layer(self, in_features: int, spec: Conv | PoolSpec) -> nnx.Module:
    if isinstance(spec, PoolSpec):
      return Pool(spec.kind, spec.window, spec.stride, spec.padding, in_features,
                  include_pad=self.avg_pool_include_pad)
    activation = self.factorized_activation if spec.factorized else 'relu'
    return ConvBN(in_features, self.depth(spec.features), spec.kernel,
                  stride=spec.stride, padding=spec.padding,
                  activation=activation, norm=spec.norm,
                  kernel_init=spec.kernel_init, dtype=self.dtype,
                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  bn_group_size=self.bn_group_size,
                  bn_update_per_group=self.bn_update_per_group,
                  bn_scale=self.bn_scale, conv_impl=self.conv_impl, rngs=self.rngs)

  def tower(self, in_features: int, *specs: Conv | PoolSpec) -> Sequential:
    """A chain of layers, named TF-slim style: Conv2d_0a_1x1, AvgPool_0b_3x3, ..."""
    layers = {}
    for letter, spec in zip('abcdefghijklmnopqrstuvwxyz', specs):
      layer = self.layer(in_features, spec)
      layers[spec.name or _slim_name(spec, letter)] = layer
      in_features = layer.out_features
    return Sequential(**layers)

  def sequential(self, in_features: int, **specs: Conv | PoolSpec) -> Sequential:
    """A chain of explicitly named layers (the stems use TF-slim endpoints)."""
    return self.tower(in_features, *(dataclasses.replace(s, name=n)
                                     for n, s in specs.items()))


def _slim_name(spec, letter: str) -> str:
  if isinstance(spec, PoolSpec):
    kind = 'MaxPool' if spec.kind == 'max' else 'AvgPool'
    return f'{kind}_0{letter}_{spec.window}x{spec.window}'
  kh, kw = _pair(spec.kernel)
  return f'Conv2d_0{letter}_{kh}x{kw}'


def iter_layers(module: nnx.Module):
  """Leaf layers (ConvBN, Pool, Linear) in computation order: branches in
  concatenation order, chains front to back. Used to map weights one to one."""
  if hasattr(module, 'sublayers'):
    for child in module.sublayers():
      yield from iter_layers(child)
  else:
    yield module


