"""How the network's convolutions are computed: `model.conv_impl`.

Every convolution of the network is an NHWC × HWIO product with TensorFlow's
SAME / VALID padding (`conv2d`). Two implementations compute it, with the same
values up to float rounding (tests/test_convolution.py):

  'xla'         XLA's convolution (`lax.conv_general_dilated`): the network as
                the paper writes it, which `cost` counts; what cuDNN and TPU
                convolutions run fast.
  'cpu_matmul'  the forms XLA:CPU runs faster (`cpu_matmul_conv`): a 1×1
                convolution as a matrix product, the filter gradient of a k×k
                one over at least 64 input channels as k² matrix products, an
                unpadded one padded by a row and a column.
  'auto'        resolved when the model is built (`resolve`): 'cpu_matmul' on
                the CPU backend, 'xla' elsewhere.

The choice moves only float rounding, but rounding can move a fragile run a
long way (docs/results.md: changes that only moved how the CPU rounds its convolutions
took the two seeds of the demo's momentum row from 12.4 and 19.2 % error to
46.8 and 77.8 %), so a run records the resolved value in its config.json and
result.json rather than leaving it to the backend, unrecorded.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLS = ('xla', 'cpu_matmul')
CHOICES = (*IMPLS, 'auto')


def resolve(name: str) -> str:
  """`model.conv_impl` as the model is built with it: 'auto' is 'cpu_matmul'
  on the CPU backend (where XLA's matrix products outrun its convolutions)
  and 'xla' on GPUs and TPUs; the others are themselves."""
  if name == 'auto':
    return 'cpu_matmul' if jax.default_backend() == 'cpu' else 'xla'
  if name not in IMPLS:
    raise ValueError(f'conv_impl must be one of {CHOICES}, got {name!r}')
  return name


def conv2d(x, kernel, stride: int = 1, padding: str = 'SAME', impl: str = 'xla'):
  """NHWC × HWIO convolution, TensorFlow's SAME / VALID padding, computed by
  `impl` ('xla' or 'cpu_matmul'; `resolve` turns 'auto' into one of them)."""
  if impl == 'xla':
    return xla_conv(x, kernel, stride, padding)
  if impl == 'cpu_matmul':
    return cpu_matmul_conv(x, kernel, stride, padding)
  raise ValueError(f'conv2d: impl must be one of {IMPLS}, got {impl!r}')


def xla_conv(x, kernel, stride: int = 1, padding='SAME'):
  """XLA's convolution: the network as written."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def cpu_matmul_conv(x, kernel, stride: int = 1, padding: str = 'SAME'):
  """The convolution in the forms XLA:CPU computes fastest.

  On a CPU, XLA's matrix product runs two to three times faster than its
  convolution on these shapes, and its filter gradients are the slowest of all
  (docs/results.md, "Per operation": the 3×3 convolution from 80 to 192
  channels at 71×71 took 1.2 s of a 7.8 s step for its filter gradient alone). So a 1×1
  convolution is a matrix product, and a k×k one over at least 64 input
  channels takes its filter gradient as k² matrix products (`_filter_gradient`;
  with fewer channels, copying each tap's input for its product costs more
  than it saves). The input gradient stays XLA's. Any other is `_padded_conv`.
  """
  if kernel.shape[:2] == (1, 1) and stride == 1:
    return jnp.einsum('nhwc,co->nhwo', x, kernel[0, 0])
  if kernel.shape[2] >= 64:
    return _conv_dot_filter_gradient(x, kernel, stride, padding)
  return _padded_conv(x, kernel, stride, padding)


def _padded_conv(x, kernel, stride, padding):
  """XLA's CPU convolution, which runs two to three times slower without any
  padding than with some (docs/results.md, "Per operation": the stem's 3×3 VALID
  convolution at 149×149 took 342 ms alone, 128 ms padded): an unpadded one
  gets a zero row and column at the bottom and right, and the outputs they
  add are cut off. It computes those extra outputs, so it does more
  multiply-adds than the network as written."""
  pads = jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], (stride, stride), padding)
  if any(low or high for low, high in pads):
    return xla_conv(x, kernel, stride, padding)
  out_h, out_w = ((size - k) // stride + 1 for size, k in zip(x.shape[1:3], kernel.shape[:2]))
  y = xla_conv(x, kernel, stride, ((0, 1), (0, 1)))
  return y[:, :out_h, :out_w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_dot_filter_gradient(x, kernel, stride, padding):
  return _padded_conv(x, kernel, stride, padding)


def _conv_forward(x, kernel, stride, padding):
  return _padded_conv(x, kernel, stride, padding), (x, kernel)


def _conv_backward(stride, padding, residuals, grad):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _padded_conv(x, kernel, stride, padding), x)
  return input_vjp(grad)[0], _filter_gradient(x, grad, kernel, stride, padding)


_conv_dot_filter_gradient.defvjp(_conv_forward, _conv_backward)


def _filter_gradient(x, grad, kernel, stride, padding):
  """∂L/∂kernel[i, j] = Σ over examples and output positions of the input
  pixel under tap (i, j) times the output gradient there: one matrix
  product (C × N·H·W) · (N·H·W × O) per tap."""
  kh, kw = kernel.shape[:2]
  n, oh, ow, _ = grad.shape
  pads = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (stride, stride), padding)
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  accumulate = jnp.promote_types(kernel.dtype, jnp.float32)   # float32, or float64
  taps = [[jnp.einsum('nhwc,nhwo->co',
                      jax.lax.slice(x, (0, i, j, 0),
                                    (n, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1,
                                     x.shape[3]), (1, stride, stride, 1)),
                      grad, preferred_element_type=accumulate)
           for j in range(kw)] for i in range(kh)]
  return jnp.stack([jnp.stack(row) for row in taps]).astype(kernel.dtype)
