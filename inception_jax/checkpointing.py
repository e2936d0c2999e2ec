"""Checkpoints: the only module that talks to Orbax.

One composite checkpoint per saved step under WORKDIR/checkpoints/STEP/:
`state` (the TrainState: parameters, BatchNorm statistics, EMA, optimizer
state, step), `data` (the Grain iterator state) and `config` (the resolved
config). Saves are asynchronous in a single process (synchronous across
several processes, where a background save's barriers would interleave with
the training loop's collectives); Orbax writes into a temporary directory and
renames it when complete, so a checkpoint is visible only once whole, and a
process killed at any moment leaves at worst an ignored temporary directory.

Once a save has finished, a `checksums.json` (SHA-256 of every file) is added
next to it; restoring checks it, so a truncated or garbled checkpoint is
detected. A damaged latest checkpoint is moved to WORKDIR/checkpoints_damaged/
and the previous good one is restored, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from inception_jax import compat, rundir
from inception_jax.errors import UserError

log = logging.getLogger(__name__)

CHECKSUMS = 'checksums.json'


class CheckpointError(UserError):
  """No checkpoint in the run directory can be restored."""


def directory(workdir: str) -> str:
  return rundir.RunDir(os.path.abspath(workdir)).checkpoints


def _hash_dir(path: str) -> dict[str, str]:
  """SHA-256 of every file under `path` (except the checksum file itself)."""
  sums = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      rel = os.path.relpath(full, path)
      if rel in (CHECKSUMS, CHECKSUMS + '.tmp'):
        continue
      digest = hashlib.sha256()
      with open(full, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
          digest.update(chunk)
      sums[rel] = digest.hexdigest()
  return sums


class CheckpointManager:
  """Saves and restores {state, data iterator state, config} every N steps."""

  def __init__(self, workdir: str, *, every_steps: int, keep: int):
    self.workdir, self.every_steps = workdir, every_steps
    self.path = directory(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        enable_async_checkpointing=jax.process_count() == 1,
        cleanup_tmp_directories=True)
    if jax.default_backend() == 'cpu':
      # Replicas on a CPU share one memory: Orbax's split of a replicated
      # array among them only costs a compiled slice per array and device.
      compat.save_replicated_arrays_whole()
    self._manager = ocp.CheckpointManager(
        self.path, options=options, item_names=('state', 'data', 'config'))
    self._unsummed: list[int] = []

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    rundir.close_after(self.close, exc)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return bool(self.every_steps) and step % self.every_steps == 0

  def save(self, step: int, state, data_state: Mapping, config: Mapping) -> None:
    """Start saving `step` in the background (a no-op if it exists already)."""
    if step in self._manager.all_steps():
      return
    self._write_checksums()      # of the previous save, which is now complete
    with rundir.writing(self.path):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(rundir.jsonable(data_state)),
          config=ocp.args.JsonSave(rundir.versioned(config))), force=True)
    self._unsummed.append(step)

  def wait(self) -> None:
    """Block until every save has finished (and has its checksums)."""
    self._write_checksums()

  def close(self) -> None:
    """Finish every save and Orbax's removal of unfinished ones (which it
    starts in the background on opening and its own close leaves running: a
    process exiting meanwhile prints its traceback), then release Orbax's
    resources (idempotent)."""
    if self._manager is not None:
      try:
        self.wait()
      finally:
        manager, self._manager = self._manager, None
        compat.await_orbax_cleanup(manager)
        with rundir.writing(self.path):
          manager.close()

  def _write_checksums(self) -> None:
    with rundir.writing(self.path):
      self._manager.wait_until_finished()
    if jax.process_index() == 0:
      for step in self._unsummed:
        step_dir = os.path.join(self.path, str(step))
        if os.path.isdir(step_dir):
          rundir.write_json(os.path.join(step_dir, CHECKSUMS), _hash_dir(step_dir))
    self._unsummed = []

  def _verify(self, step: int) -> None:
    step_dir = os.path.join(self.path, str(step))
    sums_path = os.path.join(step_dir, CHECKSUMS)
    if not os.path.exists(sums_path):
      return                     # killed before its checksums: Orbax's atomicity holds
    with open(sums_path) as f:
      expected = json.load(f)
    actual = _hash_dir(step_dir)
    bad = sorted(k for k in expected.keys() | actual.keys()
                 if expected.get(k) != actual.get(k))
    if bad:
      raise ValueError(f'{len(bad)} file(s) differ from their checksums, e.g. {bad[0]}')

  def restore(self, abstract_state, check_config: Callable[[Mapping], None] = None,
              from_step: int | None = None) -> tuple[Any, Mapping, Mapping] | None:
    """The latest good checkpoint as (state, data state, config), or None when
    there is none. `abstract_state` holds the target shapes and shardings (of
    the current mesh): the TrainState, or a dict of some of its fields
    (`{'step': …, 'ema_params': …, 'ema_batch_stats': …}`), which reads only
    those arrays — no optimizer state needed — and no data state (None). With
    `from_step`, the checkpoint of that step (it must exist): the ones after
    it are moved to WORKDIR/checkpoints_discarded/ once it is restored (kept,
    never deleted), so the run goes on from there.

    Only evidence of damage — files that differ from their checksums, a state
    that holds another step — moves a checkpoint aside (to
    WORKDIR/checkpoints_damaged/, with a warning) and falls back to the one
    before. `check_config(saved_config)` runs first and may refuse the resume;
    a checkpoint that cannot be read into this run's state (a changed model or
    optimizer, an I/O or memory error) is an error that leaves every
    checkpoint in place."""
    steps = self.all_steps()
    if from_step is not None:
      if from_step not in steps:
        raise CheckpointError(
            f'--from_step {from_step}: no checkpoint of step {from_step} in {self.path}; '
            f'there are: {", ".join(map(str, steps)) or "none"}')
      later, steps = [s for s in steps if s > from_step], [s for s in steps
                                                            if s <= from_step]
    if not steps:
      return None
    damaged = []
    for step in reversed(steps):
      try:
        self._verify(step)
      except ValueError as e:
        damaged.append(self._set_aside(step, e))
        continue
      config = self._manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))['config']
      if check_config is not None:
        check_config(config)
      try:
        restored = self._read(step, abstract_state)
      except Exception as e:     # noqa: BLE001 — reported, nothing moved
        raise CheckpointError(
            f'cannot restore the checkpoint at step {step} into this run '
            f'({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); its '
            f'checksums are good, so it was left in {self.path}. If the model or '
            f'optimizer changed, use the config it was written with or a new '
            f'--workdir; if this was an I/O or memory error, rerun.') from None
      state = restored['state']
      saved = int(jax.device_get(state['step'] if isinstance(state, Mapping) else state.step))
      if saved != step:
        damaged.append(self._set_aside(step, ValueError(f'holds step {saved}')))
        continue
      if damaged:
        log.warning('resuming from step %d; damaged checkpoints were moved to %s',
                    step, rundir.RunDir(self.workdir).checkpoints_damaged)
      if from_step is not None and later:
        for s in later:
          self._move_aside(s, discarded=True)
        log.warning('resuming from step %d (--from_step): the checkpoints of steps %s '
                    'were moved to %s', step, ', '.join(map(str, later)),
                    rundir.RunDir(self.workdir).checkpoints_discarded)
      return state, restored['data'], config
    raise CheckpointError(
        f'no checkpoint in {self.path} can be restored ({"; ".join(damaged)}); they '
        f'were moved to {rundir.RunDir(self.workdir).checkpoints_damaged}. Delete '
        f'the run directory or pass a new --workdir to start afresh.')

  def _read(self, step: int, abstract_state) -> Mapping:
    """{'state', 'data'} of checkpoint `step`. A dict of some of the state's
    fields is Orbax's partial restore: the other arrays (the optimizer's) are
    not read, and their structure need not be known."""
    if not isinstance(abstract_state, Mapping):
      return self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract_state, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))))
    return {'state': restored['state'], 'data': None}

  def _set_aside(self, step: int, error: Exception) -> str:
    reason = f'step {step}: {type(error).__name__}: {str(error)[:300]}'
    log.warning('checkpoint at step %d is damaged (%s); trying an earlier one',
                step, reason)
    self._move_aside(step)
    return reason

  def _move_aside(self, step: int, discarded: bool = False) -> None:
    """Move checkpoint `step` to checkpoints_damaged/ (or, `discarded`,
    checkpoints_discarded/) as STEP-TIME: kept, never deleted."""
    if jax.process_index() == 0:
      run = rundir.RunDir(os.path.abspath(self.workdir))
      to = run.checkpoints_discarded if discarded else run.checkpoints_damaged
      target = os.path.join(to, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.path, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'checkpoint_move_aside_{step}')
    self._manager.reload()


def config_changes(saved: Mapping, current: Mapping) -> list[str]:
  """Flattened keys whose values differ between two config dicts, except
  those a resumed run may change (`rundir.RESUMABLE_KEYS`)."""
  return rundir.changed_keys(saved, current, ignore=rundir.RESUMABLE_KEYS)


def fixed_changes(saved: Mapping, current: Mapping) -> list[str]:
  """The changed keys that no resume can take (`rundir.FIXED_ON_RESUME`)."""
  return [k for k in config_changes(saved, current) if k in rundir.FIXED_ON_RESUME]


def restore_params(workdir: str, step: int | None = None) -> dict[str, np.ndarray]:
  """The parameters of a run's latest (or given) checkpoint as numpy arrays
  in their saved dtype, keyed by their '/'-joined path, e.g.
  'params/Logits/kernel'. Reads the files only: any device count, any process."""
  path = directory(workdir)
  if step is None:
    steps = [int(n) for n in os.listdir(path) if n.isdigit()] if os.path.isdir(path) else []
    if not steps:
      raise CheckpointError(f'no checkpoint in {path}')
    step = max(steps)
  state_dir = os.path.join(path, str(step), 'state')
  is_array = lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype')
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(state_dir).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                tree, is_leaf=is_array)
    state = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        restore_args=restore_args))
  flat = jax.tree_util.tree_flatten_with_path(state['params'])[0]
  return {'params/' + '/'.join(_key(k) for k in path): np.asarray(v)
          for path, v in flat}


def _key(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)
