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

log = logging.getLogger(__name__)


def write_json(path: str, obj: Any) -> None:
  """Write JSON atomically: a reader sees the old file or the new, never half."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
    f.write('\n')
  os.replace(tmp, path)


def _jsonable(x):
  if hasattr(x, 'item'):
    return x.item()
  if hasattr(x, 'tolist'):
    return x.tolist()
  return str(x)


def _metric_lines(path: str) -> list[tuple[str, dict | None]]:
  """Each non-empty line of a metrics.jsonl with its row, or None for a line
  that is not a row (one cut short when a run was killed)."""
  if not os.path.exists(path):
    return []
  lines = []
  with open(path) as f:
    for line in filter(str.strip, f):
      try:
        row = json.loads(line)
      except ValueError:
        row = None
      lines.append((line, row if isinstance(row, dict) and 'step' in row else None))
  return lines


def read_metrics(workdir: str) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl; a line cut short by a kill is skipped."""
  return [row for _, row in _metric_lines(os.path.join(workdir, 'metrics.jsonl'))
          if row is not None]


def truncate_metrics(workdir: str, step: int) -> int:
  """Drop the metrics.jsonl rows logged after `step` (a resumed run logs them
  again) and lines cut short; returns how many were dropped. Rewritten
  atomically."""
  path = os.path.join(workdir, 'metrics.jsonl')
  lines = _metric_lines(path)
  if not lines:
    return 0
  keep = [line if line.endswith('\n') else line + '\n'
          for line, row in lines if row is not None and row['step'] <= step]
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.writelines(keep)
  os.replace(tmp, path)
  return len(lines) - len(keep)


def flat_hparams(config: Mapping, prefix: str = '') -> dict[str, Any]:
  """Nested config → {'optim.learning_rate': 0.045, ...} of scalars and strings."""
  out = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(flat_hparams(value, f'{name}.'))
    elif isinstance(value, (bool, int, float, str)):
      out[name] = value
    elif value is None:
      out[name] = 'None'
    else:
      out[name] = str(value)
  return out


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
    write_json(os.path.join(workdir, 'config.json'), self.config)
    self._metrics = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'), flush_secs=30)
    if wandb:
      self._wandb = _start_wandb(workdir, self.config, wandb_project,
                                 wandb_group, run_name or os.path.basename(
                                     os.path.abspath(workdir)))

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
    write_json(os.path.join(self.workdir, 'result.json'), dict(result))
    if self._tb is not None:
      final = {k: float(v) for k, v in result.get('metrics', {}).items()
               if isinstance(v, (int, float)) and math.isfinite(v)}
      self._tb.add_hparams(flat_hparams(self.config), final, name='.')
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
