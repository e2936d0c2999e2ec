"""The training loop as a library call: `run(config, workdir)`.

`run` reads as its sections: run directory → mesh and data → model and
optimizer → state (new or restored) → loop (`_Loop`) → result. The model is split once (`nnx.split`); the train step is a plain
`jax.jit` over the state pytree, with the state donated, parameters
replicated and the batch sharded over the ('data',) mesh, so BatchNorm sees
the global batch (`model.bn_group_size` restores per-replica statistics).
Randomness of step t is `fold_in(key(seed), t)`. Evaluation reports the EMA
weights as `eval/*` and the raw weights as `eval_raw/*`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from inception_jax import (checkpointing, config_lib, convolution, cost, losses, optim,
                           parallel, rundir, specs, stopping, tracking, trainstate, transfer)
from inception_jax.data import pipeline, sources
from inception_jax.errors import ConfigError, ExitCode, UserError

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
  """The loss or the gradient stopped being finite."""
  exit_code = ExitCode.NON_FINITE


class Preempted(UserError):
  """SIGTERM, SIGINT or SIGUSR2: the run saved a checkpoint and stopped."""
  exit_code = ExitCode.INTERRUPTED


class Pruned(UserError):
  """A search trial that the study's pruner stopped after an evaluation: the
  run saved a checkpoint and wrote result.json (state 'pruned'). Not a
  failure: the search goes on with other trials."""
  exit_code = ExitCode.PRUNED


def check_config(config) -> specs.RunSpec:
  """`config` as a run reads it, a `specs.RunSpec`: every value checked, every
  default filled in, and what this process must provide for it (64-bit JAX
  for float64, a WANDB_MODE that names a mode) — clear errors up front."""
  spec = specs.RunSpec.from_config(config)
  spec.check_process()
  return spec


def _check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = rundir.RunDir(workdir).write_probe
    with rundir.writing(probe), open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UserError(f'cannot write to workdir {workdir!r}: {e.strerror or e}') from None


def make_train_step(graphdef, tx, schedule, config):
  """The jitted step's function: (state, batch, seed) → (state, metrics).
  The seed is an argument, not a constant, so that the seeds of a sweep share
  one compiled program.

  With `optim.grad_accum_steps` = k > 1 the batch arrives as (k, micro, …)
  and the k micro-batches run one after another (`jax.lax.scan`): gradients
  summed in float32, one optimizer update for the whole batch. Dropout draws
  the whole batch's mask (`layers.Dropout`), and the BatchNorm moving
  averages end as one step over the whole batch would leave them, so a run
  with k micro-batches of n is a run of batch k·n with `model.bn_group_size`
  n (the memory is the micro-batch's).
  """
  accum = config.optim.grad_accum_steps
  per_group = config.model.bn_update_per_group
  freeze = config.freeze

  def gradients(params, batch_stats, images, labels, key, rows=None):
    images = pipeline.network_input(images)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      logits, aux = model(images, return_aux=True, rngs=key, rows=rows)
      total, parts = losses.inception_loss(
          logits, aux, labels, smoothing=config.loss.label_smoothing,
          aux_weight=config.loss.aux_weight)
      # Top-1 error in %, the paper's (and every report's) convention.
      parts['top1_error'] = 100 * jnp.mean(jnp.argmax(logits, -1) != labels)
      return total, (parts, nnx.state(model, nnx.BatchStat))
    (_, (parts, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, stats, parts

  def train_step(state: trainstate.TrainState, batch, seed):
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    if accum > 1:
      grads, batch_stats, parts = _accumulate(gradients, state.params, state.batch_stats,
                                              batch, key, per_group=per_group)
    else:
      grads, batch_stats, parts = gradients(state.params, state.batch_stats,
                                            batch['image'], batch['label'], key)
    # Frozen parameters (config.freeze): no gradient, so no share of the
    # clipping norm or of the optimizer's averages, and their old values
    # kept bit for bit (the mask is static: chosen while tracing).
    frozen = optim.frozen_mask(state.params, freeze) if freeze else None
    keep = functools.partial(_keep_frozen, frozen)
    if frozen is not None:
      grads = keep(grads, jax.tree.map(jnp.zeros_like, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = keep(optax.apply_updates(state.params, updates), state.params)
    decay = config.optim.ema_decay
    new = trainstate.TrainState(
        step=state.step + 1, params=params, batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=keep(optim.update_ema(state.ema_params, params, state.step, decay),
                        state.ema_params),
        ema_batch_stats=optim.update_ema(state.ema_batch_stats, batch_stats,
                                         state.step, decay))
    metrics = {f'train/{k}': v for k, v in parts.items()}
    metrics['train/grad_norm'] = optax.tree.norm(grads)
    # What clipping sees: the gradient with weight decay added (optim.clip_norm).
    metrics['train/clip_norm'] = optim.clip_norm(config.optim, grads, state.params, freeze)
    if config.optim.grad_clip_norm > 0:
      metrics['train/clipped'] = (metrics['train/clip_norm'] >
                                  config.optim.grad_clip_norm).astype(jnp.float32)
    metrics['train/lr'] = schedule(state.step)
    return new, metrics
  return train_step


def _keep_frozen(frozen, new, old):
  """`new`, with `old`'s leaf where `frozen` (a static mask) says so."""
  if frozen is None:
    return new
  return jax.tree.map(lambda f, n, o: o if f else n, frozen, new, old)


def _accumulate(gradients, params, batch_stats, batch, key, *, per_group: bool):
  """`gradients` of a (k, micro, …) batch, its micro-batches one after another:
  the mean gradient (summed in float32, or float64), the BatchNorm statistics
  and the metric parts, as one pass over the whole batch gives them."""
  accum, micro = batch['label'].shape
  wide = lambda tree: jax.tree.map(
      lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree)
  zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)

  def micro_step(carry, xs):
    grad_sum, stats = carry
    j, images, labels = xs
    # Per group: the averages pass from one micro-batch to the next, one
    # update per group in order. Mean: each micro-batch starts from the
    # step's averages and the results are averaged (the groups' mean update).
    grads, new_stats, parts = gradients(
        params, stats if per_group else batch_stats, images, labels, key,
        rows=(j * micro, accum * micro))
    grad_sum = jax.tree.map(jnp.add, grad_sum, wide(grads))
    stats = new_stats if per_group else jax.tree.map(jnp.add, stats, new_stats)
    return (grad_sum, stats), parts

  (grad_sum, stats), parts = jax.lax.scan(
      micro_step, (zeros(wide(params)), batch_stats if per_group else zeros(batch_stats)),
      (jnp.arange(accum), batch['image'], batch['label']))
  grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), grad_sum, params)
  if not per_group:
    stats = jax.tree.map(lambda s: s / accum, stats)
  return grads, stats, jax.tree.map(lambda x: x.mean(0), parts)


# What an evaluation adds up over its batches, for the EMA weights ('eval')
# and the raw ones ('eval_raw'); `_Loop.evaluate` divides by the count.
EVAL_SUMS = ('count', *(f'{prefix}/{name}' for prefix in ('eval', 'eval_raw')
                        for name in ('loss', 'top1_error', 'top5_error')))


def eval_totals(state) -> dict:
  """The totals an evaluation starts from: zeros in the weights' type
  (float64 for a float64 model), so the chained programs keep one type."""
  dtype = jax.tree.leaves(state.params)[0].dtype
  return {key: np.zeros((), dtype) for key in EVAL_SUMS}


def label_rank(logits, labels):
  """Each label's place among its image's logits, 0 the best: the classes
  that score higher, and those that tie with a lower index (the order of
  `evaluate`'s stable argsort, and of argmax for place 0). Counted rather
  than sorted: on batch-sharded logits it needs no collective, where
  `jax.lax.top_k` gathers the logits of every device. A row with a NaN is
  last."""
  classes = jnp.arange(logits.shape[-1])
  own = jnp.sum(jnp.where(classes == labels[:, None], logits, 0), -1, keepdims=True)
  ahead = (logits > own) | ((logits == own) & (classes < labels[:, None]))
  return jnp.where(jnp.isnan(logits).any(-1), logits.shape[-1], ahead.sum(-1))


def make_eval_step(eval_graphdef):
  @jax.jit          # a nested jit: traced once for both sets of weights
  def forward(params, stats, images):
    return nnx.merge(eval_graphdef, params, stats, copy=True)(images)

  def eval_step(state: trainstate.TrainState, batch, totals):
    """`totals` (EVAL_SUMS) plus this batch's. Each program takes the
    previous one's totals, so that XLA runs them one after another, as the
    chained train steps: independent programs in flight together, each with
    a collective, can leave a device without a thread (8 simulated CPU
    devices under load: a rendezvous never completed and XLA aborted)."""
    mask, labels = batch['mask'].astype(jnp.float32), batch['label']
    sums = {'count': jnp.sum(mask)}
    for prefix, params, stats in (('eval', state.ema_params, state.ema_batch_stats),
                                  ('eval_raw', state.params, state.batch_stats)):
      logits = forward(params, stats, pipeline.network_input(batch['image']))
      rank = label_rank(logits, labels)
      sums[f'{prefix}/loss'] = jnp.sum(
          losses.smoothed_cross_entropy(logits, labels, 0.0) * mask)
      # Misclassified images, counted: `evaluate` makes them errors in %.
      sums[f'{prefix}/top1_error'] = jnp.sum((rank >= 1) * mask)
      sums[f'{prefix}/top5_error'] = jnp.sum((rank >= 5) * mask)
    return {key: totals[key] + sums[key].astype(totals[key].dtype) for key in EVAL_SUMS}
  return eval_step


class _Progress:
  """A one-line progress bar on a terminal: step, loss, images/s, time left.
  While it shows, log lines are written above it (tqdm's logging redirect),
  never onto the bar's line."""

  def __init__(self, total: int, start: int, enabled: bool):
    self.bar, self._redirect = None, contextlib.nullcontext()
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm
      from tqdm.contrib.logging import logging_redirect_tqdm
      self.bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)
      self._redirect = logging_redirect_tqdm()

  def __enter__(self):
    self._redirect.__enter__()
    return self

  def __exit__(self, *exc):
    self._redirect.__exit__(*exc)
    if self.bar is not None:
      self.bar.close()

  def update(self, step: int, metrics: dict) -> None:
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix(loss=f"{metrics['train/loss']:.4f}",
                           img_s=f"{metrics.get('train/images_per_sec', 0):.0f}",
                           refresh=True)


def _check_resume(saved: dict, config, allow_config_change: bool) -> None:
  """Refuse to resume under a config that changes the run (unless allowed),
  and always under one that changes what a resume cannot take."""
  current = rundir.versioned(config.to_dict())       # today's, as a run records it
  changed = checkpointing.config_changes(saved, current)
  if not changed:
    return
  fixed = checkpointing.fixed_changes(saved, current)
  if fixed:
    values = ', '.join(f'{k}={rundir.flatten(saved).get(k)!r}' for k in fixed)
    raise ConfigError(
        f'{", ".join(fixed)} cannot change on resume: the data position saved in the '
        f'checkpoint belongs to its worker layout, so the run would go on with other '
        f'batches. Resume with {values}, or start a new --workdir.')
  if allow_config_change:
    log.warning('resuming with a changed config: %s', ', '.join(changed))
    return
  raise ConfigError(
      f'the config differs from the checkpointed one in: {", ".join(changed)}. '
      f'Use the same config, a new --workdir, or --allow_config_change to resume '
      f'anyway.')


def run(config, workdir: str, *, allow_config_change: bool = False,
        from_step: int | None = None, stop: stopping.StopSignal | None = None,
        trial=None) -> dict:
  """Train `config` (a ConfigDict or a nested dict) in `workdir`; returns
  (and writes) the result.

  A workdir holding checkpoints resumes from the latest good one (from the
  one of `from_step`, when given: later ones are moved aside, kept); a
  finished one returns its result.json untouched. `stop`: the command line's
  signal flag, installed before JAX was imported (else one of its own). SIGTERM, SIGINT or SIGUSR2 finishes
  the current step, saves a checkpoint and raises `Preempted`.

  `trial`: a search trial's `pruning.TrialReporter` (`train --search-trial`).
  Each evaluation reports the study's objective to it; when the study's
  pruner stops the trial, the run saves a checkpoint of that step, writes
  result.json with `state` 'pruned' and `pruned_at_step`, and raises
  `Pruned`. A pruned run is finished: run again, it raises `Pruned` again
  and trains no further.
  """
  start_time = time.time()
  config_lib.import_user_modules(config)    # a config built in Python, not loaded
  # The config, once, as specs: everything below reads the spec (still named
  # `config`: it has the config's keys).
  config = check_config(config)
  # config.json keeps the config as given (what a sweep file compares with);
  # checkpoints keep it as run on these devices (what a resume compares with).
  given, config = config, parallel.resolve_batch(config, jax.device_count())
  # Both record the convolutions as this backend computes them ('auto' resolved).
  given, config = resolve_conv_impl(given), resolve_conv_impl(config)
  is_chief = jax.process_index() == 0
  with contextlib.ExitStack() as resources:
    # From here on a signal is a request to stop, honoured after a step (or
    # before the first, when it came while starting or compiling).
    stop = stop if stop is not None else resources.enter_context(stopping.StopSignal())
    # --- Mesh and data ---------------------------------------------------------
    # The data is opened (and so checked) before anything is written: a wrong
    # data_dir or split leaves no run directory behind.
    mesh = parallel.data_mesh()
    replicated = parallel.replicated(mesh)
    data = _Data(config, mesh)
    resources.callback(data.loader.close)
    if is_chief:
      _check_writable(workdir)
    # The run's lock, so that a second launch on the same directory (a rerun
    # while an orphaned or still-queued run is alive) stops with a clear error
    # instead of interleaving two runs; released however the process ends.
    resources.enter_context(rundir.RunDir(workdir).lock(
        enabled=is_chief, hint='wait for it to finish or stop it first'))

    # --- Model and optimizer ---------------------------------------------------
    spec = config.model_spec(dataset_classes=data.num_classes)
    image_size = config.data.image_size
    tx = optim.make_optimizer(config.optim, steps_per_epoch=data.steps_per_epoch,
                              global_batch=config.batch_size, freeze=config.freeze)
    schedule = optim.learning_rate_schedule(
        config.optim, steps_per_epoch=data.steps_per_epoch, global_batch=config.batch_size)
    # Tracing builds the model, which refuses an impossible config (an image
    # smaller than the network's minimum) here.
    init, abstract = trainstate.trace_init(config, spec, image_size, tx, replicated)
    graphdef, eval_graphdef = trainstate.graphdefs(abstract)
    transfer.check_freeze(config.freeze, nnx.state(abstract, nnx.Param))

    # --- State: a fresh one, or the latest good checkpoint ---------------------
    # Opened once the data and the model are known good: a mistake found
    # before this point leaves no Orbax thread behind and no checkpoints/.
    # Orbax's first collective follows: let no process arrive minutes late
    # (`parallel.barrier`).
    parallel.barrier('checkpoints')
    checkpoints = resources.enter_context(checkpointing.CheckpointManager(
        workdir, every_steps=config.checkpoint_every_steps,
        keep=config.keep_checkpoints))
    state = _init_or_restore(config, init, checkpoints, data.loader, allow_config_change,
                             source=lambda: transfer.source_model(
                                 config.init_from, spec, image_size),
                             from_step=from_step)
    start_step = int(state.step)
    if stop.any_process():
      raise Preempted(f'stopped by {stop.received or "a signal to another process"} '
                      f'before training step {start_step + 1}; nothing new to save. '
                      f'Rerun the same command to go on.')
    if from_step is not None and is_chief:
      _discard_result(workdir)
    finished = rundir.RunDir(workdir).read_result()
    if start_step > data.total_steps and finished is None:
      raise ConfigError(
          f'the checkpoint is at step {start_step}, past total_steps '
          f'{data.total_steps}: the run has gone further already. Set total_steps >= '
          f'{start_step}, resume from an earlier checkpoint with --from_step N '
          f'(steps: {", ".join(map(str, checkpoints.all_steps()))}), or use a new '
          f'--workdir.')
    if finished is not None and finished.get('state') == 'pruned':
      raise Pruned(_pruned_message(finished, workdir, rerun=True))
    if finished is not None and start_step >= data.total_steps:
      log.info('the run in %s has finished already (result.json); nothing to do', workdir)
      return finished
    last = {}
    if is_chief:
      # Rows after the restored step are logged again by this run; a fresh
      # start (no checkpoint was written before a kill) logs every row again,
      # a fine-tuning run's step-0 evaluation included.
      rundir.truncate_metrics(workdir, start_step if start_step else -1)
      rows = [r for r in rundir.read_metrics(workdir) if 'train/loss' in r]
      last = rows[-1] if rows else {}
      # The class names, so its weights are evaluated and used without the data
      # (`trainstate.restore_weights`).
      rundir.write_json(rundir.RunDir(workdir).classes, data.class_names)

    # --- Loop ------------------------------------------------------------------
    tracker = resources.enter_context(tracking.Tracker(
        workdir, given.to_dict(), config.tracking, enabled=is_chief))
    progress = resources.enter_context(_Progress(
        data.total_steps, start_step, is_chief and config.tracking.progress))
    profile = resources.enter_context(
        _Profile(workdir, start_step, config.profile_steps))
    log.info('training %s (%s stem, width ×%g, %d×%d input, %d classes) for %d steps '
             '(%.2f steps per epoch) on %d %s device(s) in %s', run_name(config, workdir),
             spec.stem, spec.width_multiplier, image_size, image_size, data.num_classes,
             data.total_steps, data.steps_per_epoch, jax.device_count(),
             jax.devices()[0].platform, workdir)
    train_step = jax.jit(make_train_step(graphdef, tx, schedule, config),
                         donate_argnums=0, out_shardings=(replicated, replicated))
    loop = _Loop(config, data, checkpoints, tracker, progress, stop, profile,
                 train_step=train_step, seed=trainstate.seed(config),
                 eval_step=jax.jit(make_eval_step(eval_graphdef),
                                   out_shardings=replicated), trial=trial)
    state = loop.run(state)
    last = loop.last or last
    checkpoints.close()                 # every save complete before result.json

    # --- Result ----------------------------------------------------------------
    result = _result(config, cost.count(spec, image_size, model=abstract), data, loop,
                     last, start_step, start_time)
    tracker.finish(result)
    if loop.pruned_at is not None:
      raise Pruned(_pruned_message(result, workdir))
    return result


def resolve_conv_impl(config):
  """A copy of `config` whose `model.conv_impl` is the implementation the
  model is built with here (`convolution.resolve`: 'auto' is 'cpu_matmul' on a
  CPU, 'xla' elsewhere), so that config.json, the checkpoints and result.json
  say how the run computed its convolutions, not that the backend decided."""
  return dataclasses.replace(config, model=dataclasses.replace(
      config.model, conv_impl=convolution.resolve(config.model.conv_impl)))


def run_name(config, workdir: str) -> str:
  """The run's name in logs and wandb: `tracking.run_name` (a sweep's
  ROW/seed_K), else its directory's name."""
  return config.tracking.run_name or os.path.basename(os.path.abspath(workdir))


def _result(config, c: cost.Cost, data, loop, last, start_step, start_time) -> dict:
  """result.json: the final evaluation, the cost, the speed, where it ran; a
  pruned trial's also its state and the step it reached (its `steps`)."""
  steps = data.total_steps if loop.pruned_at is None else loop.pruned_at
  pruned = ({} if loop.pruned_at is None else
            {'state': 'pruned', 'pruned_at_step': loop.pruned_at,
             'objective': loop.trial.objective})
  return {
      'metrics': {**loop.eval_metrics, 'train/loss': last.get('train/loss', float('nan'))},
      **pruned,
      'steps': steps,
      'epochs': steps / data.steps_per_epoch,
      'batch_size': config.batch_size,
      'grad_accum_steps': config.optim.grad_accum_steps,
      # Images evaluated: the split less data.eval_exclude and skipped corrupt ones.
      'eval_examples': loop.eval_examples,
      'image_size': config.data.image_size,
      'params': c.params,
      'macs': c.macs,
      'train_images_per_sec': ((steps - start_step) * config.batch_size
                               / max(loop.train_time, 1e-9)),
      'wall_time_sec': time.time() - start_time,
      'devices': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind,
      'platform': jax.devices()[0].platform,
      'conv_impl': config.model.conv_impl,   # resolved: 'xla' or 'cpu_matmul'
      'processes': jax.process_count(),
      'finished_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
      **rundir.source_commit(),            # the code that trained it
      'resumed_from_step': start_step,
  }


class _Data:
  """The training stream (sharded, resumable) and the evaluation source."""

  def __init__(self, config, mesh):
    self.config, self.sharding = config, parallel.data_sharded(mesh)
    self.local_batch = pipeline.local_batch_size(config.batch_size)
    accum = config.optim.grad_accum_steps
    # Evaluation runs a micro-batch at a time: the memory training fits in.
    self.eval_batch = pipeline.local_batch_size(config.batch_size // accum)
    self.skipped = pipeline.SkipCounter()     # corrupt images, train and eval together
    train_source = sources.make_source(config.data, config.data.train_split)
    self.eval_source = sources.make_source(config.data, config.data.eval_split)
    self.num_classes = train_source.num_classes
    self.class_names = train_source.class_names()
    self.steps_per_epoch = len(train_source) / config.batch_size
    self.total_steps = config.total_steps or math.ceil(
        config.num_epochs * self.steps_per_epoch)
    self.loader = pipeline.Loader(
        pipeline.train_dataset(train_source, config.data, seed=config.seed,
                               local_batch=self.local_batch, micro_batches=accum,
                               skipped=self.skipped),
        parallel.micro_sharded(mesh) if accum > 1 else self.sharding, micro_batches=accum)

  def eval_batches(self):
    dataset, _ = pipeline.eval_dataset(self.eval_source, self.config.data,
                                       local_batch=self.eval_batch, skipped=self.skipped)
    for batch in dataset:
      yield pipeline.to_global(batch, self.sharding)


def _pruned_message(result: dict, workdir: str, rerun: bool = False) -> str:
  """'pruned at step N (objective V)', and where the run is."""
  step, objective = result['pruned_at_step'], result.get('objective', 'eval/top1_error')
  value = result.get('metrics', {}).get(objective, float('nan'))
  where = (f'; the run in {workdir} is finished (--from_step N trains it on)' if rerun
           else f'; saved a checkpoint in {checkpointing.directory(workdir)}')
  return f'pruned at step {step} ({objective} {value:.4g}){where}'


def _discard_result(workdir: str) -> None:
  """A finished run resumed from an earlier step (--from_step) is unfinished
  again: its result.json is renamed, kept, not left to say it finished."""
  run = rundir.RunDir(workdir)
  if run.finished():
    target = run.discarded_result(time.strftime('%Y%m%d-%H%M%S'))
    os.replace(run.result, target)
    log.warning('--from_step: the run is unfinished again; its result.json was moved '
                'to %s', target)


def _init_or_restore(config, init, checkpoints, loader, allow_config_change,
                     source, from_step=None) -> trainstate.TrainState:
  """A new TrainState from the traced `init` (with the weights of `source()`
  when `config.init_from` names one), or the latest good checkpoint's (onto
  this run's mesh, whatever the device count it was written on) with the data
  position."""
  # The config is checked before the state is read: a changed model or
  # optimizer is refused by name, and no good checkpoint is set aside for it.
  restored = checkpoints.restore(init.out_info, check_config=lambda saved: _check_resume(
      saved, config, allow_config_change), from_step=from_step)
  if restored is None and from_step is not None:
    raise checkpointing.CheckpointError(f'--from_step {from_step}: the run has no '
                                        f'checkpoint to resume from')
  if restored is None:
    state = init.lower().compile()(trainstate.seed(config))
    if config.init_from:
      log.info('initialising from %s', config.init_from)
      state = transfer.initialize(state, source())
    return state
  state, data_state, _ = restored
  loader.set_state(data_state)
  log.info('resumed from the checkpoint at step %d', int(state.step))
  return state


class _Loop:
  """Steps from the state's step to the last: log, evaluate, save, stop.

  Metrics stay on the device until they are used — at a logging interval, an
  evaluation, a checkpoint, the end — and are checked for NaN there, so a
  non-finite state is never saved.
  """

  def __init__(self, config, data, checkpoints, tracker, progress, stop, profile, *,
               train_step, seed, eval_step, trial=None):
    self.config, self.data, self.checkpoints = config, data, checkpoints
    # A search trial's reporter (pruning.TrialReporter), and the step where
    # its pruner stopped the run.
    self.trial, self.pruned_at = trial, None
    self.tracker, self.progress, self.stop, self.profile = tracker, progress, stop, profile
    # Jitted; compiled on first use, every process together
    # (`parallel.compiled_together`).
    self.train_step, self.seed, self.eval_step = train_step, seed, eval_step
    self.last, self.eval_metrics, self.train_time = {}, {}, 0.0
    self.clipped = []      # the steps' clipped flags since the last log, on the device
    self.eval_examples = 0

  def run(self, state: trainstate.TrainState) -> trainstate.TrainState:
    config, total = self.config, self.data.total_steps
    start = int(state.step)
    if start == 0 and config.init_from:
      # The starting point: the loaded weights on this run's evaluation data.
      self.eval_metrics = self.evaluate(state)
      self.tracker.log(0, self.eval_metrics)
    clock = _Clock(start)
    for step in range(start + 1, total + 1):
      batch = next(self.data.loader)
      if not isinstance(self.train_step, jax.stages.Compiled):
        # Compilation is not training: left out of images/s and of the time left.
        with clock.paused():
          log.info('compiling the train step (XLA; a new model takes a while, '
                   'a cached one seconds)')
          begin = time.time()
          self.train_step = parallel.compiled_together(self.train_step, state, batch,
                                                       seed=self.seed)
          log.info('compiled the train step in %.1f s', time.time() - begin)
      self.profile.before(step)
      state, metrics = self.train_step(state, batch, seed=self.seed)
      self.profile.after(step, state)
      if 'train/clipped' in metrics:
        self.clipped.append(metrics['train/clipped'])
      stopping = self.stop.any_process()
      evaluate = step == total or (config.eval_every_steps and
                                   step % config.eval_every_steps == 0)
      save = stopping or self.checkpoints.should_save(step) or step == total
      if save or evaluate or step % config.log_every_steps == 0:
        self._log(step, metrics, clock)
      if stopping:
        log.info('stopping (%s): saving the checkpoint of step %d',
                 self.stop.received or 'a signal to another process', step)
      if save:             # before evaluating: an evaluation that fails loses no step
        self.checkpoints.save(step, state, self.data.loader.get_state(),
                              config.to_dict())
      if evaluate:
        with clock.paused():
          self.eval_metrics = self.evaluate(state)
          self.tracker.log(step, self.eval_metrics)
          if self.trial is not None and self._pruned(step, state):
            break          # finished: no Preempted, nothing to resume
      if stopping:
        raise Preempted(
            f'stopped by {self.stop.received or "a signal to another process"} after '
            f'step {step} of {total}; saved a checkpoint in {self.checkpoints.path}. '
            f'Rerun the same command to resume.')
    self.train_time = clock.train_seconds()
    if not self.eval_metrics:           # resumed after the final step
      self.eval_metrics = self.evaluate(state)
    return state

  def _pruned(self, step: int, state) -> bool:
    """Report the evaluation of `step` to the search trial; when its pruner
    stops the trial there, save this step (unless saved already) and say so."""
    last = step == self.data.total_steps
    if not _chief_decides(self.trial.report(step, self.eval_metrics, last=last)):
      return False
    self.checkpoints.save(step, state, self.data.loader.get_state(), self.config.to_dict())
    self.pruned_at = step
    return True

  def _log(self, step: int, metrics, clock: '_Clock') -> None:
    """Fetch a step's metrics, stop on a non-finite loss, log at the interval."""
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    loss, grad_norm = metrics['train/loss'], metrics['train/grad_norm']
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      raise NonFiniteError(
          f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} at step "
          f'{step} (loss {loss}, gradient norm {grad_norm}); the run stopped and '
          f'everything written before step {step} is intact. Lower '
          f'optim.learning_rate or keep optim.grad_clip_norm > 0, and rerun with '
          f'--allow_config_change; when the latest checkpoint already holds the '
          f'diverging weights (the loss grew before it), add --from_step N for an '
          f'earlier one (checkpoints: '
          f'{", ".join(map(str, self.checkpoints.all_steps())) or "none"}).')
    self.last = metrics
    if step % self.config.log_every_steps == 0 or step == self.data.total_steps:
      metrics['train/images_per_sec'] = clock.images_per_sec(step, self.config.batch_size)
      if self.clipped:      # the fraction of the interval's steps that clipped
        metrics['train/clipped'] = float(np.mean(jax.device_get(self.clipped)))
        self.clipped = []
      self.tracker.log(step, metrics)
      self.progress.update(step, metrics)
      # A line per interval in train.log and SLURM's logs (no terminal there).
      log.info('step %d/%d  loss %.4f  %.1f images/s  %s left', step,
               self.data.total_steps, loss, metrics['train/images_per_sec'],
               _duration(clock.seconds_left(step, self.data.total_steps)))

  def evaluate(self, state) -> dict[str, float]:
    totals = eval_totals(state)
    for batch in self.data.eval_batches():
      if not isinstance(self.eval_step, jax.stages.Compiled):
        self.eval_step = parallel.compiled_together(self.eval_step, state, batch, totals)
      totals = self.eval_step(state, batch, totals)
    totals = jax.device_get(totals)
    count = float(totals.pop('count'))
    self.eval_examples = int(count)
    if not count:        # every image skipped (data.skip_corrupt)
      raise UserError(
          f'every evaluation image in {self.data.eval_source.where} failed to decode '
          f'(all {len(self.data.eval_source)} skipped, as logged above); nothing to '
          f'evaluate on: check data.name, data.path and data.eval_split')
    # Errors in % as `evaluate.evaluate` computes them (100 · wrong / images),
    # so a run's own figures and a later `eval` of it agree exactly.
    return {k: (100 * float(v) if k.endswith('_error') else float(v)) / count
            for k, v in totals.items()}


def _chief_decides(flag: bool) -> bool:
  """Process 0's `flag`, on every process: only it talks to the study."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


class _Profile:
  """`config.profile_steps` > 0: a `jax.profiler` trace of that many steps
  after the run's first (compiled) one, written to WORKDIR/profile/
  (`tensorboard --logdir WORKDIR/profile` with its profile plugin, or the
  `.trace.json.gz` in Perfetto)."""

  def __init__(self, workdir: str, start: int, steps: int):
    self.path = rundir.RunDir(os.path.abspath(workdir)).profile
    self.first, self.last, self.tracing = start + 2, start + 1 + steps, False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._stop()

  def before(self, step: int) -> None:
    if step == self.first and self.last >= self.first:
      jax.profiler.start_trace(self.path, create_perfetto_trace=True)
      self.tracing = True

  def after(self, step: int, state) -> None:
    if self.tracing and step == self.last:
      jax.block_until_ready(state)
      self._stop()
      log.info('profiled steps %d-%d: %s', self.first, self.last, self.path)

  def _stop(self) -> None:
    if self.tracing:
      self.tracing = False
      jax.profiler.stop_trace()


class _Clock:
  """Training time (evaluation excluded) and images/s since the last log."""

  def __init__(self, step: int):
    self.start = self.mark = time.time()
    self.start_step = self.mark_step = step
    self.paused_seconds = 0.0

  @contextlib.contextmanager
  def paused(self):
    begin = time.time()
    yield
    self.paused_seconds += time.time() - begin
    self.mark += time.time() - begin

  def images_per_sec(self, step: int, batch_size: int) -> float:
    now = time.time()
    rate = (step - self.mark_step) * batch_size / max(now - self.mark, 1e-9)
    self.mark, self.mark_step = now, step
    return rate

  def train_seconds(self) -> float:
    return time.time() - self.start - self.paused_seconds

  def seconds_left(self, step: int, total: int) -> float:
    done = step - self.start_step
    return self.train_seconds() / max(done, 1) * (total - step)


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'
