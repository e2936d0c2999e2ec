"""The training state, built (traced once) or restored from a run directory.

`TrainState` is what a checkpoint holds: the step, the parameters and
BatchNorm statistics, the optimizer state and the EMA of both. `trace_init`
gives the traced initialisation (whose output structure is also what a
restore reads into); `restore_weights` reads the weights of another run's
latest good checkpoint, for evaluation (`evaluate.py`) and fine-tuning
(`transfer.py`): the model alone, one set of weights read from the checkpoint
(Orbax's partial restore), the class names the run recorded — no optimizer,
no data source.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from inception_jax import checkpointing, config_lib, models, parallel, rundir
from inception_jax.data import sources
from inception_jax.errors import ConfigError, UserError

# The TrainState fields that hold each set of weights (parameters, BatchNorm statistics).
WEIGHT_FIELDS = {'ema': ('ema_params', 'ema_batch_stats'), 'raw': ('params', 'batch_stats')}
WEIGHTS = tuple(WEIGHT_FIELDS)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any


def seed(config):
  """`config.seed` as a traced argument of the jitted functions (the seeds of
  a sweep share one compiled program)."""
  return np.uint32(config.seed)


def graphdefs(abstract):
  """The model's structure in training and in evaluation mode (no weights)."""
  abstract.train()
  graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  abstract.eval()
  eval_graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  return graphdef, eval_graphdef


def trace_init(config, spec, image_size, tx, replicated):
  """The traced initialisation of a TrainState, and the model with shapes in
  place of weights that its trace built (the model is built once)."""
  built = []

  def init(key_seed):
    model = models.Inception(spec, image_size=image_size,
                             rngs=nnx.Rngs(params=jax.random.key(key_seed)))
    graphdef, state = nnx.split(model)
    built.append((graphdef, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=batch_stats, opt_state=tx.init(params),
                      ema_params=copy(params), ema_batch_stats=copy(batch_stats))
  traced = jax.jit(init, out_shardings=replicated).trace(seed(config))
  return traced, nnx.merge(*built[0])


@dataclasses.dataclass
class RunWeights:
  """A run's config, its dataset's class names, and one set of its weights
  with the model's structure in evaluation mode."""
  workdir: str
  config: ml_collections.ConfigDict
  class_names: list[str]
  graphdef: nnx.GraphDef
  params: nnx.State
  stats: nnx.State

  def model(self) -> models.Inception:
    return nnx.merge(self.graphdef, self.params, self.stats)


def restore_weights(workdir: str, weights: str = 'ema') -> RunWeights:
  """The EMA (or raw) weights of the latest good checkpoint of the run in
  `workdir`, on this process's mesh, with its config (config.json) and class
  names (classes.json)."""
  if weights not in WEIGHTS:
    raise ConfigError(f'weights must be one of {list(WEIGHTS)}, got {weights!r}')
  run = rundir.RunDir(workdir)
  recorded = run.read_config()           # runs of earlier versions too, in today's form
  if recorded is None:
    raise UserError(f'{workdir} holds no {rundir.CONFIG}: not a run directory')
  config = ml_collections.ConfigDict(recorded)
  config_lib.import_user_modules(config)         # blocks of the user's own
  class_names = _class_names(workdir, config)
  spec = models.InceptionSpec.from_config(config.model, dataset_classes=len(class_names))
  # The model alone, shapes in place of weights: no optimizer, no data.
  abstract = nnx.eval_shape(lambda: models.Inception(
      spec, image_size=config.data.image_size, rngs=nnx.Rngs(params=0)))
  target = _weights_target(abstract, weights, parallel.replicated(parallel.data_mesh()))
  # The run's lock, as training takes it (in the first process): opening
  # Orbax's manager clears unfinished saves, which must not happen under a
  # running trainer. A run we may not write to is read unlocked.
  held = run.lock(enabled=jax.process_index() == 0, reading=True,
                  hint='use its weights once it stops, or those of a copy')
  with held, checkpointing.CheckpointManager(
      workdir, every_steps=0, keep=config.keep_checkpoints) as checkpoints:
    restored = checkpoints.restore(target)
  if restored is None:
    raise UserError(f'{workdir} holds no checkpoint: no weights to evaluate or start from')
  params, stats = (restored[0][field] for field in WEIGHT_FIELDS[weights])
  _, eval_graphdef = graphdefs(abstract)
  return RunWeights(workdir, config, class_names, eval_graphdef, params, stats)


def _weights_target(abstract: models.Inception, weights: str, sharding) -> dict:
  """The step and the TrainState fields of `weights` ('ema' or 'raw'),
  as shapes placed by `sharding`: what Orbax's partial restore reads of a
  checkpoint (its optimizer state stays on disk, its structure unknown)."""
  _, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  place = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  params_field, stats_field = WEIGHT_FIELDS[weights]
  return {'step': place(jax.ShapeDtypeStruct((), jnp.int32)),
          params_field: jax.tree.map(place, params), stats_field: jax.tree.map(place, stats)}


def _class_names(workdir: str, config) -> list[str]:
  """The class names the run recorded when it trained (classes.json), or,
  for a run written before training recorded them, `_dataset_class_names`."""
  recorded = rundir.read_json(rundir.RunDir(workdir).classes)
  return recorded if recorded is not None else _dataset_class_names(config)


def _dataset_class_names(config) -> list[str]:
  """The older runs' way (no classes.json): the names the configured dataset
  describes now, so its data must still be where the run read it."""
  return sources.class_names(config.data)
