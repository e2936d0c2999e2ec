"""Metric writers for the run directory (contract in docs/ARCHITECTURE.md).

Only process 0 writes. Always: `config.json`, `metrics.jsonl` (one JSON
object a line, appended and flushed as it goes) and, at the end,
`result.json` (written atomically). TensorBoard event files under `tb/`
(with the HParams summary, so TensorBoard's HParams tab compares a sweep),
unless `tracking.tensorboard=False`. wandb under `wandb/` when installed and
`tracking.wandb=True`: online with an API key, offline otherwise (sync later
with `wandb sync WORKDIR/wandb/offline-run-*`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping

from inception_jax import rundir

log = logging.getLogger(__name__)


class Tracker:
  """Writes metrics to JSONL, TensorBoard and wandb (process 0 only)."""

  def __init__(self, workdir: str, config: Mapping, *, enabled: bool = True,
               tensorboard: bool = True, wandb: bool = False,
               wandb_project: str = 'inception_jax', wandb_group: str = '',
               run_name: str = ''):
    self.workdir, self.enabled = workdir, enabled
    self.config = dict(config)
    self._tb = self._wandb = None
    if not enabled:
      return
    rundir.write_json(os.path.join(workdir, 'config.json'), self.config)
    self._metrics = open(os.path.join(workdir, rundir.METRICS), 'a')
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'), flush_secs=30)
    if wandb:
      self._wandb = _start_wandb(workdir, self.config, wandb_project,
                                 wandb_group, run_name or os.path.basename(
                                     os.path.abspath(workdir)))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def log(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    self._metrics.write(json.dumps(row) + '\n')
    self._metrics.flush()
    if self._tb is not None:
      for key, value in metrics.items():
        self._tb.add_scalar(key, float(value), int(step))
    if self._wandb is not None:
      self._wandb.log(dict(metrics), step=int(step))

  def finish(self, result: Mapping[str, Any]) -> None:
    """Write result.json and the HParams summary; close the writers."""
    if not self.enabled:
      return
    rundir.write_json(os.path.join(self.workdir, rundir.RESULT), dict(result))
    if self._tb is not None:
      final = {k: float(v) for k, v in result.get('metrics', {}).items()
               if isinstance(v, (int, float)) and math.isfinite(v)}
      self._tb.add_hparams(rundir.scalars(rundir.flatten(self.config)), final, name='.')
    if self._wandb is not None:
      self._wandb.summary.update(dict(result.get('metrics', {})))
    self.close()

  def close(self) -> None:
    if not self.enabled:
      return
    if not self._metrics.closed:
      self._metrics.close()
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def _start_wandb(workdir, config, project, group, name):
  try:
    import wandb
  except ImportError:
    log.info('wandb is not installed; not logging to wandb')
    return None
  online = bool(os.environ.get('WANDB_API_KEY')) or _has_netrc_key()
  mode = os.environ.get('WANDB_MODE') or ('online' if online else 'offline')
  os.makedirs(os.path.join(workdir, 'wandb'), exist_ok=True)
  return wandb.init(project=project, group=group or None, name=name,
                    dir=workdir, config=config, mode=mode,
                    id=_wandb_id(workdir), resume='allow',
                    settings=wandb.Settings(silent=True))


def _has_netrc_key() -> bool:
  path = os.path.expanduser('~/.netrc')
  return os.path.exists(path) and 'api.wandb.ai' in open(path).read()


def _wandb_id(workdir: str) -> str:
  """A stable run id per workdir, so a resumed run continues the same wandb run."""
  path = os.path.join(workdir, 'wandb', 'run_id')
  if os.path.exists(path):
    return open(path).read().strip()
  import uuid
  run_id = uuid.uuid4().hex[:12]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(run_id)
  return run_id
