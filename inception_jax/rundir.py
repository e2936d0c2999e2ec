"""Run-directory I/O: the one place that writes and reads its JSON files.

A run directory holds `config.json`, `metrics.jsonl` and `result.json`; a
sweep directory `sweep.json` and a run directory per run, NAME/, or per seed
of a run with seeds, NAME/seed_K/ (docs/ARCHITECTURE.md has the whole contract).
Writes are atomic (a temporary file renamed over the old one), so a reader —
a report, a rerun, a user — sees the old file or the new one, never half.
Reads say what is wrong: a missing file is a default, an invalid one a
clear error; a metrics line cut short by a kill is skipped. A full disk is a
`DiskFull` naming the file (`writing`). `lock` is the exclusive lock a
trainer holds on its run directory and a sweep on its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import subprocess
from typing import IO, Any, Iterable, Mapping

from inception_jax.errors import UserError

CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
RESULT = 'result.json'

# Config keys that never change what a run computes: logging, evaluation and
# checkpoint intervals, tracking, scheduling, input-pipeline throughput.
NEUTRAL_KEYS = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                'keep_checkpoints', 'profile_steps', 'tracking.*', 'slurm.*', 'data.num_workers',
                'data.num_threads', 'data.prefetch')
# Keys a resumed run may change: the neutral ones but the number of data
# workers (the data iterator's saved position is that of its worker layout:
# another count would resume on other batches, or not at all), and its length.
RESUMABLE_KEYS = tuple(k for k in NEUTRAL_KEYS if k != 'data.num_workers') + (
    'total_steps', 'num_epochs')
# Keys no resume can change, even when allowed to change the config.
FIXED_ON_RESUME = ('data.num_workers',)
# Keys added to the config after runs had recorded theirs, with the value
# those runs had in effect: a recorded config without the key compares as if
# it held that value (an ImageNet run started before `data.object_size`
# existed resumes; a demo run drawn with the old objects is a change).
ADDED_KEYS = {'data.object_size': [0.16, 0.26], 'per_device_batch': 0, 'fit_batch': False,
              'optim.grad_accum_steps': 1, 'model.bn_update_per_group': False,
              'data.crop_sampler': 'uniform_area', 'data.crop_attempts': 10,
              'data.min_object_covered': 0.1, 'data.eval_exclude': '',
              'model.bn_scale': False, 'model.avg_pool_include_pad': False,
              'model.imports': '',
              'init_from': '', 'freeze': '', 'slurm.tasks_per_node': 1,
              'profile_steps': 0, 'model.modules_per_grid': [3, 4, 2]}


# Values that older runs recorded under a key whose type changed since, and
# the value that means the same now (`data.color_distort` was a bool).
RENAMED_VALUES = {'data.color_distort': {False: 'none'}}


def as_current(recorded: Mapping) -> dict:
  """A config recorded by an earlier version, with today's keys: added keys
  at the values those runs had in effect, renamed values in today's form."""
  config = jsonable(recorded)
  for key, value in ADDED_KEYS.items():
    parent, leaf = _parent(config, key)
    parent.setdefault(leaf, value)
  for key, renamed in RENAMED_VALUES.items():
    parent, leaf = _parent(config, key)
    if isinstance(parent.get(leaf), bool) and parent[leaf] in renamed:
      parent[leaf] = renamed[parent[leaf]]
  return config


def _parent(config: dict, key: str) -> tuple[dict, str]:
  """The mapping that holds dotted `key` (made when missing), and its last part."""
  *parents, leaf = key.split('.')
  for name in parents:
    config = config.setdefault(name, {})
  return config, leaf


# --- Layout --------------------------------------------------------------------

def seed_name(name: str, seed: int) -> str:
  """The run directory of a seed of sweep run NAME, relative to the sweep's."""
  return f'{name}/seed_{seed}'


SEED_DIR = re.compile(r'seed_(\d+)')


def holds_run(path: str) -> bool:
  """Whether `path` is a run directory that has started: it holds a config,
  a result or checkpoints."""
  return any(os.path.exists(os.path.join(path, f))
             for f in (CONFIG, RESULT, 'checkpoints'))


def seed_dirs(path: str) -> list[int]:
  """The seeds K of the seed_K run directories in `path`, sorted."""
  try:
    names = os.listdir(path)
  except OSError:
    return []
  return sorted(int(m.group(1)) for m in map(SEED_DIR.fullmatch, names)
                if m and holds_run(os.path.join(path, m.group(0))))


# --- Writing -------------------------------------------------------------------

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
  """A write failed for want of space (or quota); what was written before is intact."""
  exit_code = 6

  def __init__(self, path: str):
    super().__init__(f'no space left on device while writing {path}; free space and '
                     f'rerun the same command to resume')


def is_disk_full(error: BaseException) -> bool:
  """An OSError ENOSPC or EDQUOT, or the same reported by TensorStore (Orbax's
  writer) as "... [os_error_code='28']"."""
  if isinstance(error, OSError):
    return error.errno in NO_SPACE
  return any(f"os_error_code='{code}'" in str(error) for code in NO_SPACE)


def close_after(close, error: BaseException | None) -> None:
  """`close()` on the way out of a `with` block: a `DiskFull` it raises is
  dropped when `error`, the exception in flight, is one already (that error
  says it)."""
  try:
    close()
  except DiskFull:
    if not isinstance(error, DiskFull):
      raise


@contextlib.contextmanager
def writing(path: str):
  """A full disk while writing `path` becomes `DiskFull(path)`."""
  try:
    yield
  except Exception as e:
    if is_disk_full(e):
      raise DiskFull(path) from None
    raise


def _default(x: Any) -> Any:
  """JSON for numpy and JAX scalars and arrays; anything else as its string."""
  if hasattr(x, 'item') and getattr(x, 'ndim', 0) == 0:
    return x.item()
  if hasattr(x, 'tolist'):
    return x.tolist()
  return str(x)


def jsonable(tree: Any) -> Any:
  """A JSON-safe copy: numpy values become Python ones, tuples lists."""
  return json.loads(json.dumps(tree, default=_default))


def source_commit() -> dict:
  """{'commit': short hash, 'dirty': whether tracked files differ from it} of
  the checkout this package runs from; None for each outside git."""
  def git(*args):
    try:
      proc = subprocess.run(['git', '-C', _PACKAGE_PARENT, *args], capture_output=True,
                            text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
      return None
    return proc.stdout.strip() if proc.returncode == 0 else None
  commit = git('rev-parse', '--short', 'HEAD')
  changed = git('status', '--porcelain', '--untracked-files=no') if commit else None
  return {'commit': commit, 'dirty': None if changed is None else bool(changed)}


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_text(path: str, text: str) -> None:
  """Replace `path` atomically with `text` (on failure, `path` is as it was)."""
  tmp = f'{path}.tmp'
  try:
    with writing(path):
      with open(tmp, 'w') as f:
        f.write(text)
      os.replace(tmp, path)
  finally:
    if os.path.isfile(tmp):
      os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
  """Write `obj` as indented JSON, atomically."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default) + '\n')


# --- Reading -------------------------------------------------------------------

def read_json(path: str, default: Any = None) -> Any:
  """The JSON in `path`, or `default` when there is no such file. A file that
  is not valid JSON is a `UserError` naming it (our writes are atomic, so that
  is damage or a hand edit, never a half-written file)."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return default
  except ValueError as e:
    raise UserError(f'{path} is not valid JSON: {e}') from None
  except OSError as e:
    raise UserError(f'cannot read {path}: {e.strerror or e}') from None


def _metric_lines(path: str) -> list[tuple[str, dict | None]]:
  """Each non-empty line of a metrics file with its row, or None for a line
  that is not a row (one cut short when a run was killed)."""
  if not os.path.exists(path):
    return []
  lines = []
  with open(path, 'rb') as f:        # bytes: a crash can tear a line mid-character
    for raw in f:
      try:
        line = raw.decode('utf-8')
        row = json.loads(line) if line.strip() else None
      except ValueError:             # UnicodeDecodeError included
        line, row = raw.decode('utf-8', errors='replace'), None
      if line.strip():
        lines.append((line, row if isinstance(row, dict) and 'step' in row else None))
  return lines


def read_metrics(workdir: str) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl; a line cut short by a kill is skipped."""
  return [row for _, row in _metric_lines(os.path.join(workdir, METRICS))
          if row is not None]


def error_percent(metrics: Mapping, key: str = 'top1',
                  prefix: str = 'eval') -> float | None:
  """`prefix/key_error` of a metrics row or result (top-1/top-5 error in %,
  the project's one convention), or None. Runs written before that
  convention logged the accuracy as a fraction (`eval/top1`): converted."""
  value = metrics.get(f'{prefix}/{key}_error')
  if isinstance(value, (int, float)):
    return float(value)
  accuracy = metrics.get(f'{prefix}/{key}')
  return 100 * (1 - accuracy) if isinstance(accuracy, (int, float)) else None


def truncate_metrics(workdir: str, step: int) -> int:
  """Drop the metrics rows logged after `step` (a resumed run logs them again)
  and lines cut short; returns how many were dropped."""
  path = os.path.join(workdir, METRICS)
  lines = _metric_lines(path)
  if not lines:
    return 0
  keep = [line if line.endswith('\n') else line + '\n'
          for line, row in lines if row is not None and row['step'] <= step]
  write_text(path, ''.join(keep))
  return len(lines) - len(keep)


# --- Configs -------------------------------------------------------------------

def flatten(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  """Nested mappings → {'optim.learning_rate': 0.045, ...}; other values as they are."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def scalars(flat: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
  """Values that are not bool, int, float or str as strings (for HParams)."""
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in flat.items()}


def matches(key: str, patterns: Iterable[str]) -> bool:
  """Whether a flattened key is one of `patterns` (exact keys, or 'prefix.*')."""
  return any(key == p or (p.endswith('.*') and key.startswith(p[:-1])) for p in patterns)


def changed_keys(a: Mapping, b: Mapping, *, ignore: Iterable[str] = ()) -> list[str]:
  """Flattened keys whose JSON values differ between two nested mappings, less
  those matching `ignore` (exact keys, or 'prefix.*')."""
  fa, fb = (flatten(as_current(c)) for c in (a, b))
  ignore = tuple(ignore)
  return sorted(k for k in fa.keys() | fb.keys()
                if fa.get(k, '<missing>') != fb.get(k, '<missing>')
                and not matches(k, ignore))


def config_differences(a: Mapping, b: Mapping, *,
                       ignore: Iterable[str] = ()) -> list[str]:
  """`changed_keys` as 'key: value in a -> value in b' lines."""
  fa, fb = flatten(jsonable(a)), flatten(jsonable(b))
  show = lambda flat, k: json.dumps(flat[k]) if k in flat else 'missing'
  return [f'{k}: {show(fa, k)} -> {show(fb, k)}'
          for k in changed_keys(a, b, ignore=ignore)]


# --- Locks ---------------------------------------------------------------------

class LockHeld(UserError):
  """Another process holds the lock; `pid` is the one it wrote into the file."""

  def __init__(self, path: str, pid: str):
    super().__init__(f'{path} is held by process {pid}')
    self.pid = pid


def lock(path: str) -> IO:
  """Take an exclusive lock (flock, not waiting) on `path` and write this
  process's id into it. Returns the open file: closing it, or the end of the
  process however it ends, releases the lock. Held elsewhere: `LockHeld`; a
  filesystem without locks (some network filesystems): a `UserError`."""
  f = open(path, 'a+')
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    pid = f.read().strip() or 'unknown'
    f.close()
    raise LockHeld(path, pid) from None
  except OSError as e:
    f.close()
    raise UserError(f'cannot lock {path}: its filesystem does not support file locks '
                    f'({e.strerror or e}); use a directory on one that does, such as '
                    f'a local disk') from None
  try:
    with writing(path):
      f.seek(0)
      f.truncate()
      f.write(f'{os.getpid()}\n')
      f.flush()
  except DiskFull:
    f.close()
    raise
  return f
