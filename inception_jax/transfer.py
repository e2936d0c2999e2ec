"""Fine-tuning: a run that starts from trained weights (`config.init_from`)
and keeps some of them fixed (`config.freeze`).

  init_from = 'run:DIR'            another run's EMA weights (its latest good checkpoint)
              'keras' | 'keras:FILE'   Keras's InceptionV3 (`weights='imagenet'`, from
                                   Keras's download cache, or a weights file)
              'tf_slim:CHECKPOINT'  Google's TF-slim checkpoint (`interop.from_tf_slim`)
              'torchvision:FILE'   a state dict saved by `torch.save`
                                   (`interop.from_torchvision`)
  freeze    = REGEX                the parameters whose name (`optim.path_name`, e.g.
                                   `Mixed_5b/branch_1x1/Conv2d_0a_1x1/conv/kernel`) it
                                   matches from the start keep their loaded values

Every parameter and BatchNorm statistic is taken from the source, matched by
name and shape. The heads are the exception: the classifier (`Logits`) and
the auxiliary head start fresh when they do not fit — another class count,
another input size for the auxiliary head's 5×5 layer, or a source without
one (Keras's model has none). Anything else that does not fit is an error
naming it: a source of another width or architecture, or torchvision's
weights in a model without `bn_scale` and `avg_pool_include_pad`. The EMA
starts at the loaded weights, and the run evaluates them before its first
step (step 0 in metrics.jsonl).
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from flax import nnx

from inception_jax import interop, models, optim, specs, trainstate
from inception_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)

# `init_from`'s forms, checked with the rest of the config (`specs.RunSpec`).
KINDS = specs.INIT_FROM_KINDS
HEADS = ('Logits/', 'AuxLogits/')


def source_of(weights: str) -> str:
  """An `init_from` form for `weights`: itself when it names its kind, else by
  the file's name — `.pt`/`.pth` torchvision, `.h5`/`.keras` Keras, anything else
  a TF-slim checkpoint."""
  kind, sep, _ = weights.partition(':')
  if sep and kind in KINDS or weights == 'keras':
    return weights
  if weights.endswith(('.pt', '.pth')):
    return f'torchvision:{weights}'
  if weights.endswith(('.h5', '.keras')):
    return f'keras:{weights}'
  return f'tf_slim:{weights}'


def check_freeze(freeze: str, params) -> None:
  """A `freeze` that matches no parameter is a typo: say so, with examples."""
  if freeze and not any(jax.tree.leaves(optim.frozen_mask(params, freeze))):
    names = [optim.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    raise ConfigError(f'freeze={freeze!r} matches no parameter; names look like '
                      f'{names[-1]!r} (matched from the start)')


def source_model(init_from: str, spec: models.InceptionSpec,
                 image_size: int) -> nnx.Module:
  """The model whose weights `init_from` names, in evaluation mode."""
  kind, _, where = init_from.partition(':')
  if kind == 'run':
    return trainstate.restore_weights(where, 'ema').model()
  if kind == 'tf_slim':
    return interop.from_tf_slim(where, image_size=image_size,
                                width_multiplier=spec.width_multiplier)
  if kind == 'torchvision':
    return interop.from_torchvision(interop.read_torch_state_dict(where),
                                    image_size=image_size)
  import keras
  try:
    reference = keras.applications.InceptionV3(weights=where or 'imagenet')
  except Exception as e:        # a missing file, no download cache: Keras's own words
    raise UserError(f'cannot load Keras InceptionV3 weights {where or "imagenet"!r}: '
                    f'{e}') from None
  return interop.from_keras(reference)


def initialize(state: trainstate.TrainState, source: nnx.Module) -> trainstate.TrainState:
  """`state` with the source's parameters and statistics (module doc), the
  EMA equal to them, placed as `state`'s are."""
  _, params, stats = nnx.split(source, nnx.Param, nnx.BatchStat)
  fresh = []
  params = _take(state.params, params, fresh)
  stats = _take(state.batch_stats, stats, fresh)
  if fresh:
    log.info('init_from: %d arrays of the heads start fresh (they do not fit the '
             'source): %s', len(fresh), ', '.join(fresh))
  copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)
  return state.replace(params=params, batch_stats=stats, ema_params=copy(params),
                       ema_batch_stats=copy(stats))


def _take(ours, theirs, fresh: list[str]):
  """`ours` with each array replaced by the source's of the same name and
  shape; `fresh` collects the head arrays kept as initialised."""
  theirs = {optim.path_name(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(theirs)[0]}
  ours_names, misfits = set(), []

  def pick(path, leaf):
    name = optim.path_name(path)
    ours_names.add(name)
    value = theirs.get(name)
    if value is not None and value.shape == leaf.shape:
      value = value.astype(leaf.dtype)
      return jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda i: value[i])
    if name.startswith(HEADS):
      fresh.append(name)
    else:
      misfits.append(f'{name} {tuple(leaf.shape)}' +
                     (' (not in the source)' if value is None else f' (source {value.shape})'))
    return leaf

  taken = jax.tree_util.tree_map_with_path(pick, ours)
  unused = [n for n in theirs if n not in ours_names and not n.startswith(HEADS)]
  if misfits or unused:
    raise ConfigError(
        'init_from: the source does not fit this model: '
        + '; '.join(misfits[:5] + [f'{n} (only in the source)' for n in unused[:5]])
        + (' …' if len(misfits) > 5 or len(unused) > 5 else '')
        + '. The source must have this model\'s architecture and width (torchvision '
        'weights also need model.bn_scale=True and model.avg_pool_include_pad=True).')
  return taken
