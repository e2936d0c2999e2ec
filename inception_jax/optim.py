"""The paper's optimizer as an Optax chain (Section 8;
docs/paper_notes.md#training-recipe).

`make_optimizer(spec.optim, ...)` (a `specs.OptimSpec`, its values checked
when it was made) returns, in this order:

  1. coupled L2 weight decay: g ← g + wd·w on conv/dense kernels only. Google's
     code adds wd·Σ‖w‖²/2 to the loss (TF-slim's `l2_regularizer`), whose
     gradient this is;
  2. clipping by global norm (`grad_clip_norm`, the paper's "threshold 2.0";
     0 turns it off) of that total gradient, as TF would clip the gradient of
     the regularized loss;
  3. TF1 RMSProp (`name='rmsprop'`) or TF1 momentum SGD (`name='momentum'`),
     driven by `learning_rate_schedule`.

The learning rate of update i (0-based: i updates were applied before it) is
`learning_rate_schedule(...)(i)`, as TF's `exponential_decay(global_step)`
with the global step read before it is incremented. A trainer logs
`train/lr` by calling the same schedule with its step counter.

`ema_decay`/`update_ema` are the running average used for evaluation
(Google's `ExponentialMovingAverage(0.9999, num_updates=global_step)`).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from inception_jax.errors import ConfigError

OPTIMIZERS = ('rmsprop', 'momentum')


def _check(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def base_learning_rate(spec, global_batch: int) -> float:
  """`learning_rate`, × global_batch / base_batch_size when base_batch_size > 0
  (the Cloud TPU recipe's 0.165 per 256 images, tensorflow/tpu `inception_v3.py`)."""
  if spec.base_batch_size == 0:
    return float(spec.learning_rate)
  _check(global_batch > 0, f'global batch must be > 0, got {global_batch}')
  return float(spec.learning_rate) * global_batch / spec.base_batch_size


def learning_rate_schedule(spec, *, steps_per_epoch: float,
                           global_batch: int) -> optax.Schedule:
  """Staircase exponential decay after an optional linear warm-up.

  With lr0 = `base_learning_rate`, W = warmup_epochs·steps_per_epoch and
  D = decay_epochs·steps_per_epoch (floats: an epoch need not be a whole
  number of steps):

    lr(t) = lr0 · t / W                               for t < W
    lr(t) = lr0 · decay_rate ** floor((t − W) / D)    for t ≥ W

  so the decay is counted from the end of the warm-up, lr is continuous at W,
  and W = 0 is exactly Google's `exponential_decay(0.045, global_step,
  decay_steps, 0.94, staircase=True)` (`inception_distributed_train.py`).
  """
  _check(steps_per_epoch > 0, f'steps_per_epoch must be > 0, got {steps_per_epoch}')
  lr0 = base_learning_rate(spec, global_batch)
  decay_steps = float(spec.decay_epochs) * steps_per_epoch
  warmup_steps = float(spec.warmup_epochs) * steps_per_epoch
  rate = float(spec.decay_rate)

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    decays = jnp.floor(jnp.maximum(t - warmup_steps, 0.0) / decay_steps)
    lr = lr0 * rate ** decays
    if warmup_steps > 0:
      lr = jnp.where(t < warmup_steps, lr0 * t / warmup_steps, lr)
    return lr
  return schedule


def path_name(path) -> str:
  """A parameter's name: the keys of its tree path joined by '/', as in
  `Mixed_5b/branch_5x5/Conv2d_0b_5x5/conv/kernel`."""
  return '/'.join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _is_kernel(path) -> bool:
  return path_name(path).rsplit('/', 1)[-1] == 'kernel'


def frozen_mask(params, freeze: str) -> Any:
  """True for the parameters that `config.freeze` keeps fixed: those whose
  `path_name` the regular expression matches from its start ('' freezes
  nothing). Same structure as `params`, bool leaves."""
  pattern = re.compile(freeze) if freeze else None
  return jax.tree_util.tree_map_with_path(
      lambda p, _: bool(pattern and pattern.match(path_name(p))), params)


def weight_decay_mask(params, freeze: str = '') -> Any:
  """True for conv and dense kernels (leaves named `kernel`), False for
  biases and BatchNorm offsets — Google decays "weights" only
  (docs/paper_notes.md#weight-decay) — and for frozen parameters.

  `params` is an `nnx.State` of `nnx.Param` (or any nested dict); the mask
  has the same structure with bool leaves, as `optax.masked` expects.
  """
  return jax.tree.map(lambda kernel, frozen: kernel and not frozen,
                      jax.tree_util.tree_map_with_path(lambda p, _: _is_kernel(p), params),
                      frozen_mask(params, freeze))


def tf_rmsprop(learning_rate, *, decay: float, epsilon: float,
               momentum: float) -> optax.GradientTransformation:
  """`tf.compat.v1.train.RMSPropOptimizer` (TF's `rmsprop.py`): ms ← ρ·ms + (1−ρ)·g²
  with ms initialised to ones; mom ← μ·mom + lr·g/√(ms+ε); w ← w − mom.
  Optax's rmsprop is exactly this with these options (its docstring: TF1's
  `initial_scale` is 1; docs/paper_notes.md#rmsprop)."""
  return optax.rmsprop(learning_rate, decay=decay, eps=epsilon,
                       initial_scale=1.0, eps_in_sqrt=True, momentum=momentum)


def tf_momentum(learning_rate, *, momentum: float) -> optax.GradientTransformation:
  """`tf.compat.v1.train.MomentumOptimizer`: accum ← μ·accum + g;
  w ← w − lr·accum (the current lr scales the whole accumulator)."""
  return optax.chain(optax.trace(decay=momentum),
                     optax.scale_by_learning_rate(learning_rate))


def make_optimizer(spec, *, steps_per_epoch: float, global_batch: int,
                   freeze: str = '') -> optax.GradientTransformation:
  """Weight decay → global-norm clipping → RMSProp or momentum (module doc),
  as `spec` (a `specs.OptimSpec`) says. Frozen parameters (`frozen_mask`)
  take no weight decay; the trainer gives them zero gradients and keeps their
  values."""
  wd, clip = float(spec.weight_decay), float(spec.grad_clip_norm)
  schedule = learning_rate_schedule(spec, steps_per_epoch=steps_per_epoch,
                                    global_batch=global_batch)
  parts = []
  if wd > 0:
    parts.append(optax.add_decayed_weights(
        wd, mask=functools.partial(weight_decay_mask, freeze=freeze)))
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if spec.name == 'rmsprop':
    parts.append(tf_rmsprop(schedule, decay=spec.rms_decay,
                            epsilon=spec.epsilon, momentum=spec.momentum))
  else:
    parts.append(tf_momentum(schedule, momentum=spec.momentum))
  return optax.chain(*parts)


def clip_norm(spec, grads, params, freeze: str = ''):
  """The global norm that `clip_by_global_norm` sees: the gradient with the
  weight decay already added (`make_optimizer`'s order), so the logs show how
  often the threshold (`optim.grad_clip_norm`) clips."""
  wd = float(spec.weight_decay)
  if wd > 0:
    grads = jax.tree.map(lambda g, p, m: g + wd * p if m else g,
                         grads, params, weight_decay_mask(params, freeze))
  return optax.tree.norm(grads)


def ema_decay(step, decay: float):
  """min(decay, (1 + t) / (10 + t)): TF's `ExponentialMovingAverage(decay,
  num_updates=t)`, with t = `step` (a Python or traced integer)."""
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def update_ema(ema_tree, new_tree, step, decay: float):
  """ema ← d·ema + (1 − d)·new with d = `ema_decay(step, decay)`.

  Pass t = the 0-based index of the optimizer update just applied (the global
  step before its increment), so the first average uses d = 1/10. Works on
  any pytree (parameters and BatchNorm statistics); leaves that are not
  floating point (counters, RNG keys) take the new value.
  """
  d = ema_decay(step, decay)

  def average(ema, new):
    ema, new = jnp.asarray(ema), jnp.asarray(new)
    if not jnp.issubdtype(new.dtype, jnp.floating):
      return new
    dtype = jnp.promote_types(ema.dtype, jnp.float32)   # bfloat16 averages in float32
    mixed = d * ema.astype(dtype) + (1 - d) * new.astype(dtype)
    return mixed.astype(ema.dtype)
  return jax.tree.map(average, ema_tree, new_tree)
