"""Metric writers for the run directory (contract in docs/ARCHITECTURE.md).

Only process 0 writes. Always: `config.json`, `metrics.jsonl` (one JSON
object a line, appended and flushed as it goes) and, at the end,
`result.json` (written atomically). TensorBoard event files in the run
directory itself, unless `tracking.tensorboard=False`, so that
`tensorboard --logdir SWEEP` names each run ROW/seed_K; the HParams session
is written when the run starts (so running and failed runs show in the
HParams tab) and ended when it finishes. wandb under `wandb/` when installed
and `tracking.wandb=True`, in `tracking.wandb_mode` (`offline` by default, or
WANDB_MODE when set), named `tracking.run_name` (a sweep's ROW/seed_K), in
the group `tracking.wandb_group` (the sweep) with job type and tags from the
sweep; one log line says where it logs, and a wandb that cannot start is one
warning, not the end of the run. Metrics follow one convention: top-1/top-5
error in % (`eval/top1_error`), as the paper's tables give them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from typing import Any, Mapping

from inception_jax import compat, rundir
from inception_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)

WANDB_MODES = ('offline', 'online', 'disabled')
_WANDB_ALIASES = {'dryrun': 'offline', 'run': 'online'}     # wandb's older names

# The metrics the HParams session declares: result.json's final metrics (the
# comparison table's), logged as scalars under these tags.
FINAL_METRICS = ('eval/top1_error', 'eval/top5_error', 'eval/loss', 'eval_raw/top1_error',
                 'eval_raw/top5_error', 'eval_raw/loss', 'train/loss')


def resolve_wandb_mode(configured: str) -> str:
  """The mode wandb runs in: WANDB_MODE when set (wandb's own variable),
  otherwise `tracking.wandb_mode`."""
  check_mode('tracking.wandb_mode', configured)
  env = os.environ.get('WANDB_MODE')
  if not env:
    return configured
  mode = _WANDB_ALIASES.get(env, env)
  check_mode('WANDB_MODE', mode, env)
  return mode


def check_mode(where: str, mode: str, raw: str | None = None) -> None:
  """A wandb mode (`tracking.wandb_mode`, WANDB_MODE) that names none is a
  ConfigError saying which are."""
  if mode not in WANDB_MODES:
    raise ConfigError(f'{where} must be one of {", ".join(WANDB_MODES)}; '
                      f'got {raw or mode!r}')


class Tracker:
  """Writes metrics to JSONL, TensorBoard and wandb (process 0 only)."""

  def __init__(self, workdir: str, config: Mapping, spec, *, enabled: bool = True):
    """`config`: the run's config as a plain dict (config.json, the HParams
    session, wandb's config); `spec`: its `tracking` section
    (`specs.TrackingSpec`), which writers to start and the run's names."""
    self.workdir, self.enabled = workdir, enabled
    self.config, self.hparams_first = dict(config), list(spec.hparams_first)
    self._tb = self._wandb = None
    self._tb_logged = {}              # tag -> (step, value) last written
    if not enabled:
      return
    rundir.RunDir(workdir).write_config(self.config)     # with its config_version
    self._metrics = open(rundir.RunDir(workdir).metrics, 'a')
    if spec.tensorboard:
      SummaryWriter = _tensorboardx().SummaryWriter
      self._tb_errors = _WriterThreadErrors()
      self._tb = SummaryWriter(workdir, flush_secs=30)
      for writer in (self._tb.all_writers or {}).values():
        _never_block_on_a_dead_thread(writer.event_writer)
      _write_hparams(self._tb.logdir, self.config, self.hparams_first, ended=False)
    if spec.wandb:
      self._wandb = _start_wandb(
          workdir, self.config, mode=spec.wandb_mode, init_timeout=spec.wandb_init_timeout,
          project=spec.wandb_project, group=spec.wandb_group, job_type=spec.job_type,
          tags=list(spec.tags), name=spec.run_name or os.path.basename(os.path.abspath(workdir)))

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    rundir.close_after(self.close, exc)

  def log(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    with rundir.writing(self._metrics.name):
      self._metrics.write(json.dumps(row) + '\n')
      self._metrics.flush()
    if self._tb is not None:
      self._check_tensorboard()
      try:
        for key, value in metrics.items():
          self._tb.add_scalar(key, float(value), int(step))
          self._tb_logged[key] = (int(step), float(value))
      except _WriterGone:
        self._check_tensorboard()
    if self._wandb is not None:
      try:
        self._wandb.log(dict(metrics), step=int(step))
      except Exception as e:        # noqa: BLE001 — its service process died
        self._drop_wandb(e)

  def finish(self, result: Mapping[str, Any]) -> None:
    """Write result.json, the final metrics and the HParams session's end;
    close the writers."""
    if not self.enabled:
      return
    rundir.RunDir(self.workdir).write_result(result)
    if self._tb is not None:
      self._check_tensorboard()
      step = int(result.get('steps', 0))
      for key, value in result.get('metrics', {}).items():
        value = float(value)
        if math.isfinite(value) and self._tb_logged.get(key) != (step, value):
          self._tb.add_scalar(key, value, step)
      _write_hparams(self._tb.logdir, self.config, self.hparams_first, ended=True)
    if self._wandb is not None:
      try:
        self._wandb.summary.update(dict(result.get('metrics', {})))
      except Exception as e:        # noqa: BLE001 — its service process died
        self._drop_wandb(e)
    self.close()

  def close(self) -> None:
    """Close every writer, whatever the others do; a full disk is a `DiskFull`."""
    if not self.enabled:
      return
    with contextlib.ExitStack() as closing:
      closing.callback(self._finish_wandb)
      if self._tb is not None:
        closing.callback(self._tb_errors.close)
        closing.callback(_close_tensorboard, self._tb)
        self._tb = None
      with rundir.writing(self._metrics.name):
        self._metrics.close()                 # a second close does nothing

  def _check_tensorboard(self) -> None:
    """Raise what stopped TensorBoard's writer thread (a full disk: `DiskFull`):
    with the thread gone, its queue fills and the next write would block for
    good. The writer is closed first, so nothing waits on it."""
    error = self._tb_errors.error()
    if error is None and all(_worker_alive(w) for w in (self._tb.all_writers or {}).values()):
      return
    _abandon(self._tb)
    self._tb = None
    self._tb_errors.close()
    if error is not None and rundir.is_disk_full(error):
      raise rundir.DiskFull(rundir.RunDir(self.workdir).events)
    why = f' ({_one_line(error)})' if error is not None else ''
    raise UserError(f'TensorBoard\'s event writer stopped{why} while '
                    f'writing in {self.workdir}; the run stopped, its checkpoints and '
                    f'metrics.jsonl are intact: rerun the same command to resume '
                    f'(or set tracking.tensorboard=false)')

  def _drop_wandb(self, error: Exception) -> None:
    """wandb failed while the run trains (its service process gone): one
    warning, and training goes on without it, as when it cannot start;
    metrics.jsonl and TensorBoard hold every metric."""
    log.warning('wandb stopped working (%s); training goes on without it '
                '(metrics.jsonl and TensorBoard as always)', _one_line(error))
    self._wandb = None
    try:                            # its exit handler would fail again, loudly
      import wandb
      wandb.teardown()
    except Exception:               # noqa: BLE001, S110
      pass

  def _finish_wandb(self) -> None:
    if self._wandb is not None:
      try:
        self._wandb.finish()
      except Exception as e:      # an upload that fails at the end
        log.warning('wandb did not finish cleanly: %s', _one_line(e))
      self._wandb = None


_tensorboardx = compat.import_tensorboardx      # without PyTorch, when not loaded yet


class _WriterGone(Exception):
  """A write to a tensorboardX writer whose thread has died."""


def _never_block_on_a_dead_thread(events) -> None:
  """Make the writer's queue refuse a write once its thread is gone: a full
  queue blocks a write until the thread takes an event, which a dead thread
  never does (the run then hung for good). A live thread is waited for as
  long as it takes."""
  writer = compat.EventWriter(events)
  queue_ = writer.queue
  put = queue_.put

  def guarded(item, block=True, timeout=None):
    while True:
      try:
        return put(item, True, 1.0)
      except queue.Full:
        if not writer.thread_alive():
          raise _WriterGone() from None
  queue_.put = guarded


class _WriterThreadErrors:
  """The exception that ended a tensorboardX writer thread, kept for the main
  loop (`Tracker._check_tensorboard`) instead of printed as a thread's
  traceback; other threads' exceptions go to the previous hook."""

  def __init__(self):
    self._errors, self._previous = [], threading.excepthook
    threading.excepthook = self._hook

  def _hook(self, args):
    if compat.EventWriter.is_thread(args.thread):
      self._errors.append(args.exc_value)
    else:
      self._previous(args)

  def error(self) -> BaseException | None:
    return self._errors[0] if self._errors else None

  def close(self) -> None:
    if threading.excepthook == self._hook:
      threading.excepthook = self._previous


def _worker_alive(writer) -> bool:
  events = compat.EventWriter(writer.event_writer)
  return events.closed or events.thread_alive()


def _abandon(tb) -> None:
  """Mark a SummaryWriter's writers closed without waiting on a thread that
  is gone (its queue may be full): their exit handlers then do nothing."""
  for writer in (tb.all_writers or {}).values():
    events = compat.EventWriter(writer.event_writer)
    if not events.closed and not events.thread_alive():
      events.mark_closed()


def _close_tensorboard(tb) -> None:
  """Close a SummaryWriter. One that cannot flush (a full disk) has its thread
  stopped and is marked closed, so that its exit handler does not fail again;
  one whose thread died is marked closed without waiting on it."""
  _abandon(tb)
  try:
    with rundir.writing(tb.logdir):
      tb.close()
  except rundir.DiskFull:
    for writer in (tb.all_writers or {}).values():
      events = compat.EventWriter(writer.event_writer)
      if not events.closed:
        events.stop_thread()
        events.mark_closed()
    raise


def _write_hparams(directory: str, config: Mapping, first=(), *, ended: bool) -> None:
  """TensorBoard's HParams session for the run in `directory`: the experiment
  (config keys, FINAL_METRICS), the session start (the flattened config) and,
  once the run has finished, the session end. One file, replaced as a whole,
  so a resumed run keeps one session and its current config.

  `first` (a sweep's keys that vary, then `seed`) are listed first and
  marked as differing: TensorBoard orders the experiment's keys differing
  first, then by name, so the ablation's columns lead and the constants
  follow. Without them (a single run) every key is listed by name."""
  flat = rundir.scalars(rundir.flatten(config))
  ordered = {k: flat[k] for k in [*first, *sorted(flat)] if k in flat}
  summaries = compat.hparams_summaries(ordered, dict.fromkeys(FINAL_METRICS))
  try:
    compat.mark_hparams_differing(summaries[0], set(first))
  except ImportError:        # TensorBoard itself is an extra; tensorboardX writes without it
    log.info('tensorboard is not installed: the swept keys lead the HParams '
             'table but are not marked as differing (pip install inception_jax[tensorboard])')
  run, now = rundir.RunDir(directory), time.time()
  with rundir.writing(run.hparams_events):
    compat.write_events(run.hparams_tmp, summaries[:3 if ended else 2], now)
    os.replace(run.hparams_tmp, run.hparams_events)


def _start_wandb(workdir, config, *, mode, init_timeout, project, group, job_type,
                 tags, name):
  """A wandb run in `mode` (WANDB_MODE overrides it), or None. One log line
  says where the run is logged, or one warning why wandb did not start."""
  effective = resolve_wandb_mode(mode)
  if effective != mode:
    log.warning('WANDB_MODE=%s overrides tracking.wandb_mode=%s',
                os.environ['WANDB_MODE'], mode)
  if effective == 'disabled':
    return None
  try:
    import wandb
  except ImportError:
    log.info('wandb is not installed; not logging to wandb')
    return None
  directory = os.path.abspath(workdir)
  os.makedirs(rundir.RunDir(directory).wandb, exist_ok=True)
  try:
    # silent: wandb's own banner would repeat the line below, and asks the
    # server for the user name first (seconds, or a timeout offline).
    run = wandb.init(project=project, group=group or None, name=name,
                     job_type=job_type or None, tags=tags or None,
                     dir=directory, config=config, mode=effective,
                     id=_wandb_id(workdir), resume='allow',
                     settings=wandb.Settings(silent=True, init_timeout=init_timeout,
                                             login_timeout=init_timeout))
  except Exception as e:         # no network, a bad key, a timeout
    log.warning('wandb did not start (%s); training goes on without it '
                '(tracking.wandb_mode=offline logs locally for `wandb sync`)',
                _one_line(e))
    return None
  if run.disabled:               # a login prompt that timed out
    log.warning('wandb did not start (no login); training goes on without it')
    return None
  if run.offline:
    log.info('wandb: logging offline to %s; upload with `wandb sync %s`',
             run.settings.sync_dir, run.settings.sync_dir)
  else:
    log.info('wandb: logging online to %s', run.url)
  return run


def _one_line(error: Exception) -> str:
  first = str(error).strip().splitlines()
  return f'{type(error).__name__}: {first[0]}' if first else type(error).__name__


def _wandb_id(workdir: str) -> str:
  """A stable run id per workdir, so a resumed run continues the same wandb run."""
  path = rundir.RunDir(workdir).wandb_run_id
  if os.path.exists(path):
    return open(path).read().strip()
  import uuid
  run_id = uuid.uuid4().hex[:12]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(run_id)
  return run_id


# --- Uploading offline runs ----------------------------------------------------

def offline_runs(directory: str) -> list[str]:
  """The wandb offline runs under `directory` (a sweep or a run directory):
  every RUN/wandb/offline-run-* there, sorted."""
  found = []
  for root, dirs, _ in os.walk(directory):
    if os.path.basename(root) == rundir.WANDB:
      found += [os.path.join(root, d) for d in dirs if d.startswith('offline-run-')]
      dirs[:] = []
    else:                                   # checkpoints hold no wandb runs
      dirs[:] = [d for d in dirs if d not in (rundir.CHECKPOINTS, rundir.PROFILE)]
  return sorted(found)


def sync(directory: str, *, dry_run: bool = False, echo=print) -> int:
  """Upload every offline wandb run under `directory` with wandb's own
  `wandb sync` (one call for them all; `dry_run`: wandb lists what it would
  upload); returns its exit status."""
  import subprocess
  if not os.path.isdir(directory):
    raise ConfigError(f'no directory {directory!r}')
  runs = offline_runs(directory)
  if not runs:
    raise ConfigError(f'no offline wandb runs under {directory} (runs log to wandb '
                      f'with tracking.wandb=True, offline by default, when wandb is '
                      f'installed)')
  command = [sys.executable, '-m', 'wandb', 'sync', *(['--dry-run'] if dry_run else []),
             *runs]
  echo(f'{len(runs)} offline wandb run(s) under {directory}; running '
       f'wandb sync{" --dry-run" if dry_run else ""}', flush=True)
  return subprocess.run(command).returncode

