"""Evaluation of trained runs as the paper reports it: 1, 12 or 144 crops per
image (Tables 3 and 4, `preprocess.multi_crops`) and ensembles of runs
(Table 5).

  evaluate(['runs/v3'], crops=144)    # → {'top1_error', 'top5_error', 'crops', ...}
  python -m inception_jax eval --workdir runs/v3 --crops 144 [--ensemble runs/v3b …]

Each run's weights come from its latest good checkpoint (the EMA weights, or
the raw ones); each image's views are made at the run's own input size, their
logits turned into softmax probabilities and averaged over the views, and an
ensemble averages its members' probabilities. The forward pass is sharded
over all devices like training's.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from flax import nnx

from inception_jax import models, parallel, specs, trainstate, transfer
from inception_jax.data import pipeline, preprocess, sources
from inception_jax.errors import ConfigError, UserError

WEIGHTS = trainstate.WEIGHTS


Member = trainstate.RunWeights      # one run of an ensemble


def load(workdir: str, weights: str = 'ema') -> Member:
  """A run's config (config.json, read once into a `specs.RunSpec`) and the
  weights of its latest good checkpoint."""
  member = trainstate.restore_weights(workdir, weights)
  return dataclasses.replace(member, config=specs.RunSpec.from_config(member.config))


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, stats, images):
  return nnx.merge(graphdef, params, stats, copy=True)(images)


def probabilities(members: list[Member], crops: int = 1, split: str | None = None,
                  limit: int | None = None, batch: int | None = None,
                  exclude: str | None = None):
  """(probabilities (examples, classes), labels): each image's softmax
  probabilities averaged over its `crops` views and over the members.
  `split` defaults to the first member's `data.eval_split`; `exclude` is a
  file naming examples to leave out (default: the first run's
  `data.eval_exclude`, '' for none); `limit` takes the first examples only;
  `batch` views go through the network at a time (default: the first run's
  evaluation batch, its micro-batch)."""
  return _probabilities(members, _source(members[0], split, exclude), crops, limit, batch)


def _probabilities(members: list[Member], source, crops: int, limit: int | None,
                   batch: int | None):
  _check_limit(limit)
  count = len(source) if limit is None else min(limit, len(source))
  for member in members[1:]:
    if len(member.class_names) != source.num_classes:
      raise ConfigError(f'{member.workdir} was trained on another number of classes '
                        f'than {members[0].workdir}')
  if batch is None:                   # training's evaluation batch: its micro-batch
    run = parallel.resolve_batch(members[0].config, jax.device_count(), quiet=True)
    batch = run.batch_size // run.optim.grad_accum_steps
  per_batch = max(1, batch // crops)
  chunks, labels = [], []
  for start in range(0, count, per_batch):
    records = [source[i] for i in range(start, min(start + per_batch, count))]
    labels += [r['label'] for r in records]
    summed = 0
    for member in members:
      views = np.concatenate([_views(member, r, crops) for r in records])
      summed = summed + _mean_over_views(member, views, crops, rows=per_batch * crops)
    chunks.append(summed / len(members))
  return np.concatenate(chunks), np.asarray(labels)


def _source(member: Member, split: str | None, exclude: str | None):
  data = member.config.data
  split = split or data.eval_split
  _check_split(data, split)
  return sources.make_source(data, split, exclude)


def _check_split(data, split: str) -> None:
  """A split the dataset lacks (a typo) is an error naming those it has. The
  synthetic source takes any name but the training split's for the
  evaluation split, and a folder's message names only the missing folder;
  TFDS names its splits itself."""
  if data.name == 'synthetic':
    where, known = 'the synthetic dataset', [data.train_split, data.eval_split]
  elif data.name == 'folder' and data.path and os.path.isdir(data.path):
    where = data.path
    known = sorted(d for d in os.listdir(data.path)
                   if not d.startswith('.') and os.path.isdir(os.path.join(data.path, d)))
  else:
    return
  if split not in known:
    raise ConfigError(f'{where} has no split {split!r}; it has '
                      f'{", ".join(map(repr, known)) or "none"}')


def _check_limit(limit: int | None) -> None:
  if limit is not None and limit < 1:
    raise ConfigError(f'--limit must be a number of examples >= 1, got {limit}')


def _views(member: Member, record, crops: int) -> np.ndarray:
  return preprocess.multi_crops(record['image'], pipeline.options(member.config.data),
                                crops, record['where'])


def _mean_over_views(member: Member, views: np.ndarray, crops: int, rows: int) -> np.ndarray:
  """Softmax probabilities of the views (`crops` per image, in order),
  averaged per image: (images, classes). The views go through the network
  padded to `rows` rounded up to a multiple of the devices (one program for
  every batch of the same size)."""
  count, devices = len(views), jax.device_count()
  padded = -(-max(rows, count) // devices) * devices
  views = np.concatenate([views, np.zeros((padded - count, *views.shape[1:]), views.dtype)])
  sharded = jax.device_put(views, parallel.data_sharded(parallel.data_mesh()))
  logits = _forward(member.graphdef, member.params, member.stats, sharded)
  logits = np.asarray(jax.device_get(logits), np.float64)[:count]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return probs.reshape(count // crops, crops, -1).mean(1)


def evaluate(workdirs: list[str], crops: int = 1, weights: str = 'ema',
             split: str | None = None, limit: int | None = None,
             exclude: str | None = None) -> dict:
  """Top-1 and top-5 error (%) of a run or an ensemble (the first run's data),
  on `split` less the examples that file `exclude` names (default: the first
  run's `data.eval_exclude`; '' for none): the paper's 48,238 ImageNet
  validation images with the ILSVRC 2014 blacklist."""
  if crops not in preprocess.MULTI_CROPS:
    raise ConfigError(f'crops must be one of {list(preprocess.MULTI_CROPS)}, got {crops}')
  _check_limit(limit)           # before loading the runs
  members = [load(w, weights) for w in workdirs]
  source = _source(members[0], split, exclude)
  probs, labels = _probabilities(members, source, crops, limit, batch=None)
  k = min(5, probs.shape[1])
  ranked = np.argsort(-probs, axis=1, kind='stable')
  wrong = lambda hits: 100 * float(np.sum(~hits)) / len(labels)   # as training's
  return {'top1_error': wrong(ranked[:, 0] == labels),
          'top5_error': wrong((ranked[:, :k] == labels[:, None]).any(1)),
          'crops': crops, 'examples': len(labels), 'members': list(workdirs),
          'weights': weights,
          # The exclusion file and how many examples of the split it left out.
          'exclude': getattr(source, 'path', ''), 'excluded': getattr(source, 'excluded', 0)}


IMPORTED_SIZE = 299      # the released model's input


def imported(weights: str) -> Member:
  """Imported weights (`transfer.source_of`: 'tf_slim:CKPT', 'torchvision:FILE',
  'keras[:FILE]' or a file) as a member of the released architecture at
  299×299, its classes numbered."""
  model = transfer.source_model(transfer.source_of(weights), models.preset('inception_v3'),
                                IMPORTED_SIZE)
  model.eval()
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  classes = model.Logits.kernel.shape[-1]
  return Member(weights, None, [f'class {i}' for i in range(classes)], graphdef, params,
                stats)


def predict(workdir: str | None, images: list[str], weights: str = 'ema', top: int = 5,
            labels: str | None = None) -> list[dict]:
  """The `top` classes of each image file, most probable first, through the
  evaluation crop: [{'image': path, 'classes': [name, …], 'probabilities':
  [p, …]}, …]. From a run (`workdir`, its 'ema' or 'raw' weights; class names
  from its dataset), or, without one, from imported `weights` (`imported`,
  Google's evaluation crop). `labels`: a file of class names, one per line."""
  if (workdir is None) != (weights not in WEIGHTS):
    raise UserError('predict takes a run (--workdir RUN, --weights ema|raw) or imported '
                    'weights (--weights FILE, without --workdir)')
  if workdir is not None:
    member = load(workdir, weights)
    options = pipeline.options(member.config.data)
  else:
    member = imported(weights)
    options = preprocess.Options(image_size=IMPORTED_SIZE)
  names = _labels(labels, len(member.class_names)) if labels else member.class_names
  views = []
  for path in images:
    try:
      with open(path, 'rb') as f:
        encoded = f.read()
    except OSError as e:
      raise UserError(f'cannot read {path}: {e.strerror or e}') from None
    views.append(preprocess.eval_image(encoded, options, path))
  probs = _mean_over_views(member, np.stack(views), crops=1, rows=len(views))
  out = []
  for path, p in zip(images, probs):
    best = np.argsort(-p, kind='stable')[:top]
    out.append({'image': path, 'classes': [names[i] for i in best],
                'probabilities': [float(p[i]) for i in best]})
  return out


def _labels(path: str, classes: int) -> list[str]:
  try:
    with open(path) as f:
      names = [line.strip() for line in f if line.strip()]
  except OSError as e:
    raise UserError(f'cannot read the labels file {path}: {e.strerror or e}') from None
  if len(names) != classes:
    raise UserError(f'{path} names {len(names)} classes; the model has {classes}')
  return names
