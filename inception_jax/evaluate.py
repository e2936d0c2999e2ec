"""Evaluation of trained runs as the paper reports it: 1, 12 or 144 crops per
image (Tables 3 and 4, `preprocess.multi_crops`) and ensembles of runs
(Table 5).

  evaluate(['runs/v3'], crops=144)              # → {'top1', 'top5', 'crops', ...}
  python launch.py eval --workdir runs/v3 --crops 144 [--ensemble runs/v3b …]

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
import ml_collections
import numpy as np
from flax import nnx

from inception_jax import checkpointing, models, optim, parallel, rundir, train
from inception_jax.data import pipeline, preprocess, sources
from inception_jax.errors import ConfigError, UserError

WEIGHTS = ('ema', 'raw')


@dataclasses.dataclass
class Member:
  """One run of an ensemble: its config and its weights in evaluation mode."""
  workdir: str
  config: ml_collections.ConfigDict
  class_names: list[str]     # of its dataset
  graphdef: nnx.GraphDef     # the model in evaluation mode
  params: nnx.State
  stats: nnx.State

  def logits(self, images):
    return _forward(self.graphdef, self.params, self.stats, images)



def load(workdir: str, weights: str = 'ema') -> Member:
  """A run's config (config.json) and the weights of its latest good checkpoint."""
  if weights not in WEIGHTS:
    raise ConfigError(f'weights must be one of {list(WEIGHTS)}, got {weights!r}')
  recorded = rundir.read_json(os.path.join(workdir, rundir.CONFIG))
  if recorded is None:
    raise UserError(f'{workdir} holds no config.json: not a run directory')
  config = ml_collections.ConfigDict(rundir.as_current(recorded))   # runs of earlier versions too
  class_names = sources.make_source(config.data, config.data.train_split).class_names()
  spec = models.InceptionSpec.from_config(config.model, dataset_classes=len(class_names))
  mesh = parallel.data_mesh()
  replicated = parallel.replicated(mesh)
  # The checkpoint's structure: the trainer's own (optimizer state included).
  tx = optim.make_optimizer(config.optim, steps_per_epoch=1.0, global_batch=config.batch_size)
  init, abstract = train._trace_init(config, spec, config.data.image_size, tx, replicated)
  # The run's lock, as training takes it: opening Orbax's manager clears
  # unfinished saves, which must not happen under a running trainer.
  try:
    held = rundir.lock(os.path.join(workdir, '.lock'))
  except rundir.LockHeld as e:
    raise UserError(f'a process is training in {workdir} (pid {e.pid}); evaluate it '
                    f'once it stops, or evaluate a copy') from None
  with held, checkpointing.CheckpointManager(
      workdir, every_steps=0, keep=config.keep_checkpoints) as checkpoints:
    restored = checkpoints.restore(init.out_info)
  if restored is None:
    raise UserError(f'{workdir} holds no checkpoint to evaluate')
  state = restored[0]
  params, stats = ((state.ema_params, state.ema_batch_stats) if weights == 'ema' else
                   (state.params, state.batch_stats))
  _, eval_graphdef = train._graphdefs(abstract)
  return Member(workdir, config, class_names, eval_graphdef, params, stats)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, stats, images):
  return nnx.merge(graphdef, params, stats, copy=True)(images)


def probabilities(members: list[Member], crops: int = 1, split: str | None = None,
                  limit: int | None = None, batch: int | None = None):
  """(probabilities (examples, classes), labels): each image's softmax
  probabilities averaged over its `crops` views and over the members.
  `split` defaults to the first member's `data.eval_split`; `limit` takes
  the first examples only; `batch` views go through the network at a time
  (default: the first run's evaluation batch, its micro-batch)."""
  first = members[0].config.data
  source = sources.make_source(first, split or first.eval_split)
  count = len(source) if limit is None else min(limit, len(source))
  for member in members[1:]:
    if len(member.class_names) != source.num_classes:
      raise ConfigError(f'{member.workdir} was trained on another number of classes '
                        f'than {members[0].workdir}')
  if batch is None:                   # training's evaluation batch: its micro-batch
    run = train.resolve_batch(members[0].config, jax.device_count(), quiet=True)
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
  logits = np.asarray(jax.device_get(member.logits(sharded)), np.float64)[:count]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return probs.reshape(count // crops, crops, -1).mean(1)


def evaluate(workdirs: list[str], crops: int = 1, weights: str = 'ema',
             split: str | None = None, limit: int | None = None) -> dict:
  """Top-1 and top-5 accuracy of a run or an ensemble (the first run's data)."""
  if crops not in preprocess.MULTI_CROPS:
    raise ConfigError(f'crops must be one of {list(preprocess.MULTI_CROPS)}, got {crops}')
  members = [load(w, weights) for w in workdirs]
  probs, labels = probabilities(members, crops, split, limit)
  k = min(5, probs.shape[1])
  ranked = np.argsort(-probs, axis=1, kind='stable')
  return {'top1': float(np.mean(ranked[:, 0] == labels)),
          'top5': float(np.mean((ranked[:, :k] == labels[:, None]).any(1))),
          'crops': crops, 'examples': len(labels), 'members': list(workdirs),
          'weights': weights}


def predict(workdir: str, images: list[str], weights: str = 'ema', top: int = 5) -> list[dict]:
  """The `top` classes of each image file, most probable first, through the
  run's evaluation crop: [{'image': path, 'classes': [name, …],
  'probabilities': [p, …]}, …]; class names from the run's dataset."""
  member = load(workdir, weights)
  data = member.config.data
  views = []
  for path in images:
    try:
      with open(path, 'rb') as f:
        encoded = f.read()
    except OSError as e:
      raise UserError(f'cannot read {path}: {e.strerror or e}') from None
    views.append(preprocess.eval_image(encoded, pipeline.options(data), path))
  probs = _mean_over_views(member, np.stack(views), crops=1, rows=len(views))
  out = []
  for path, p in zip(images, probs):
    best = np.argsort(-p, kind='stable')[:top]
    out.append({'image': path, 'classes': [member.class_names[i] for i in best],
                'probabilities': [float(p[i]) for i in best]})
  return out
