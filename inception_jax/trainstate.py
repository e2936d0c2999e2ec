"""The training state, built (traced once) or restored from a run directory.

`TrainState` is what a checkpoint holds: the step, the parameters and
BatchNorm statistics, the optimizer state and the EMA of both. `trace_init`
gives the traced initialisation (whose output structure is also what a
restore reads into); `restore_weights` reads the weights of another run's
latest good checkpoint, for evaluation (`evaluate.py`) and fine-tuning
(`transfer.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from inception_jax import checkpointing, models, optim, parallel, rundir
from inception_jax.data import sources
from inception_jax.errors import ConfigError, UserError

WEIGHTS = ('ema', 'raw')


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
  `workdir`, on this process's mesh, with its config (config.json)."""
  if weights not in WEIGHTS:
    raise ConfigError(f'weights must be one of {list(WEIGHTS)}, got {weights!r}')
  recorded = rundir.read_json(os.path.join(workdir, rundir.CONFIG))
  if recorded is None:
    raise UserError(f'{workdir} holds no config.json: not a run directory')
  config = ml_collections.ConfigDict(rundir.as_current(recorded))   # runs of earlier versions too
  class_names = sources.make_source(config.data, config.data.train_split).class_names()
  spec = models.InceptionSpec.from_config(config.model, dataset_classes=len(class_names))
  replicated = parallel.replicated(parallel.data_mesh())
  # The checkpoint's structure: the trainer's own (optimizer state included).
  tx = optim.make_optimizer(config.optim, steps_per_epoch=1.0, global_batch=config.batch_size)
  init, abstract = trace_init(config, spec, config.data.image_size, tx, replicated)
  # The run's lock, as training takes it (in the first process): opening
  # Orbax's manager clears unfinished saves, which must not happen under a
  # running trainer.
  try:
    held = (rundir.lock(os.path.join(workdir, '.lock')) if jax.process_index() == 0
            else contextlib.nullcontext())
  except rundir.LockHeld as e:
    raise UserError(f'a process is training in {workdir} (pid {e.pid}); use its '
                    f'weights once it stops, or those of a copy') from None
  except OSError as e:
    # A run we may not write to (an archive, a colleague's runs) has no
    # trainer writing in it either: read it unlocked.
    if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
      raise
    held = contextlib.nullcontext()
  with held, checkpointing.CheckpointManager(
      workdir, every_steps=0, keep=config.keep_checkpoints) as checkpoints:
    restored = checkpoints.restore(init.out_info)
  if restored is None:
    raise UserError(f'{workdir} holds no checkpoint: no weights to evaluate or start from')
  state = restored[0]
  params, stats = ((state.ema_params, state.ema_batch_stats) if weights == 'ema' else
                   (state.params, state.batch_stats))
  _, eval_graphdef = graphdefs(abstract)
  return RunWeights(workdir, config, class_names, eval_graphdef, params, stats)
