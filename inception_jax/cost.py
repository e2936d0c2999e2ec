"""Parameter and multiply-add counts: the paper's "Cost" column (Table 3).

Multiply-adds are read off the traced computation itself: every convolution
and matrix product in the jaxpr of one inference forward pass (batch 1)
contributes output elements × (kernel window × input channels per group), or
output elements × contracted size. Nothing is executed, so any registered
block and any input size is counted without extra bookkeeping. The network is
traced as written, with XLA's convolutions (`conv_impl='xla'`), whichever
implementation a run computes them with. Element-wise work (BatchNorm, ReLU,
pooling) is not counted, as in the paper and in the published Keras/torchvision
figures.

Like the paper ("less than 25 million parameters", 5 G multiply-adds), the
headline figures describe the network used at inference: the auxiliary head,
which only shapes training, is reported separately (`aux_params`,
`aux_macs`). `params` counts every variable of that network — weights plus
BatchNorm moving statistics — which is what Keras's `count_params()` reports
(23,851,784 for InceptionV3); `trainable_params` counts the weights alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from inception_jax import compat, config_lib, models, specs
from inception_jax.data import sources


@dataclasses.dataclass(frozen=True)
class Cost:
  params: int             # inference network: weights + BN statistics
  trainable_params: int   # inference network: weights only
  macs: int               # one inference forward pass (batch 1)
  aux_params: int         # the auxiliary head (training only), all variables
  aux_macs: int           # the auxiliary head's extra multiply-adds
  image_size: int
  num_classes: int

  @property
  def gmacs(self) -> float:
    return self.macs / 1e9

  def to_dict(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), gmacs=round(self.gmacs, 4))


def jaxpr_macs(jaxpr, include_padding: bool = True) -> int:
  """Multiply-adds of the convolutions and dot products in a (closed) jaxpr.

  `include_padding=False` leaves out the kernel taps that fall on SAME
  padding, which is how XLA's cost analysis counts convolutions.
  """
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      lhs, rhs = (v.aval for v in eqn.invars)
      out = eqn.outvars[0].aval
      dims = eqn.params['dimension_numbers']  # specs: (batch|out, feature|in, *spatial)
      if include_padding:
        taps = math.prod(out.shape[d] for d in dims.out_spec[2:]) * math.prod(
            rhs.shape[d] for d in dims.rhs_spec[2:])
      else:
        taps = math.prod(
            _valid_taps(lhs.shape[l], rhs.shape[r], out.shape[o], stride, pad)
            for l, r, o, stride, pad in zip(
                dims.lhs_spec[2:], dims.rhs_spec[2:], dims.out_spec[2:],
                eqn.params['window_strides'], eqn.params['padding']))
      total += (out.shape[dims.out_spec[0]] * out.shape[dims.out_spec[1]] *
                taps * rhs.shape[dims.rhs_spec[1]])
    elif name == 'dot_general':
      lhs = eqn.invars[0].aval
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      out = eqn.outvars[0].aval
      total += math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
    else:
      repeat = eqn.params.get('length', 1) if name == 'scan' else 1
      for sub in _subjaxprs(eqn.params):
        total += repeat * jaxpr_macs(sub, include_padding)
  return total


def _valid_taps(size: int, kernel: int, out: int, stride: int, pad) -> int:
  """(output position, kernel tap) pairs along one axis that read real input."""
  low = pad[0]
  return sum(1 for o in range(out) for k in range(kernel)
             if 0 <= o * stride - low + k < size)


def _subjaxprs(params):
  for value in params.values():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if hasattr(v, 'eqns') or hasattr(getattr(v, 'jaxpr', None), 'eqns'):
        yield v


def _forward(model: models.Inception, image_size: int, return_aux: bool):
  """The eval-mode forward of `model` as a function of its state, and its
  abstract arguments."""
  model.eval()
  graphdef, state = nnx.split(model)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x, return_aux=return_aux)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return forward, state, x


def abstract_model(spec: models.InceptionSpec, image_size: int) -> models.Inception:
  """`spec` at `image_size` with shapes in place of weights (nothing computed),
  its convolutions XLA's: the network as written (`conv_impl='xla'`), not
  the CPU's faster forms, which compute extra outputs of unpadded
  convolutions (`convolution.cpu_matmul_conv`)."""
  spec = dataclasses.replace(spec, conv_impl='xla')
  return nnx.eval_shape(lambda: models.Inception(
      spec, image_size=image_size, rngs=nnx.Rngs(0)))


def count(spec: models.InceptionSpec | Mapping[str, Any],
          image_size: int | None = None, *, model: models.Inception | None = None) -> Cost:
  """Parameters and multiply-adds of `spec` at `image_size` (default: the
  stem's), the network as written whatever `spec.conv_impl` says. `model`:
  the model of `spec` when the caller has built it already (used when its
  convolutions are XLA's, `conv_impl='xla'`)."""
  if not isinstance(spec, models.InceptionSpec):
    spec = models.InceptionSpec.from_config(spec)
  image_size = image_size or spec.default_image_size
  if model is None or model.conv_impl != 'xla':
    model = abstract_model(spec, image_size)
  size = lambda state: sum(int(x.size) for x in jax.tree.leaves(state))
  aux_params = size(nnx.state(model.AuxLogits)) if spec.aux_head else 0
  aux_trainable = size(nnx.state(model.AuxLogits, nnx.Param)) if spec.aux_head else 0
  params = size(nnx.state(model)) - aux_params
  trainable = size(nnx.state(model, nnx.Param)) - aux_trainable
  forward, state, x = _forward(model, image_size, return_aux=False)
  macs = jaxpr_macs(jax.make_jaxpr(forward)(state, x))
  aux_macs = 0
  if spec.aux_head:
    forward, state, x = _forward(model, image_size, return_aux=True)
    aux_macs = jaxpr_macs(jax.make_jaxpr(forward)(state, x)) - macs
  return Cost(params=params, trainable_params=trainable, macs=int(macs),
              aux_params=aux_params, aux_macs=int(aux_macs),
              image_size=image_size, num_classes=spec.num_classes)


def xla_flops(model: models.Inception, image_size: int) -> float:
  """XLA's own count (`cost_analysis()['flops']`) for the compiled eval
  forward pass at batch 1: 2 flops per multiply-add plus element-wise work.
  `model` computes as it was built: with `conv_impl='xla'` for the network
  as written."""
  forward, state, x = _forward(model, image_size, return_aux=False)
  return float(compat.cost_analysis(jax.jit(forward).lower(state, x).compile())['flops'])


def of_config(config) -> Cost:
  """Cost of a training config: its `model` at its `data.image_size`; the
  number of classes follows the dataset unless `model.num_classes` is set.
  The config is read once into a `specs.RunSpec` (every value checked)."""
  config_lib.import_user_modules(config)      # blocks of the user's own
  run = specs.RunSpec.from_config(config)
  classes = None
  if run.model.num_classes is None:           # the dataset's description, no pipeline
    classes = sources.num_classes(run.data)
  return count(run.model_spec(classes), run.data.image_size)
