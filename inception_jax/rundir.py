"""Run directories: the one module that knows their file names, and the one
place that writes and reads their JSON files.

A run directory (`RunDir`) holds `config.json`, `metrics.jsonl`,
`result.json`, `checkpoints/` and the rest its properties name; a sweep
directory (`SweepDir`) `sweep.json` and a run directory per run, NAME/, or
per seed of a run with seeds, NAME/seed_K/; a search directory (`SearchDir`)
`search.json`, the study's journal and a run directory per trial, trial_NNN/
(docs/ARCHITECTURE.md has the whole contract). Writes are atomic (a
temporary file renamed over the old one), so a reader — a report, a rerun, a
user — sees the old file or the new one, never half. Reads say what is
wrong: a missing file is a default, an invalid one a clear error; a metrics
line cut short by a kill is skipped. A full disk is a `DiskFull` naming the
file (`writing`). `RunDir.lock` is the exclusive lock a trainer holds on its
run directory, `SweepDir.lock` a sweep's on its own, `SearchDir.lock` a
search driver's. A recorded config is read through `as_current`: the
`MIGRATIONS` from the version that wrote it to today's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import subprocess
from typing import Any, ClassVar, IO, Iterable, Mapping

from inception_jax.errors import ExitCode, UserError

CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
RESULT = 'result.json'
CLASSES = 'classes.json'      # the dataset's class names, in label order
# The rest of a run directory (`RunDir` has each as a path).
CHECKPOINTS = 'checkpoints'
CHECKPOINTS_DAMAGED = 'checkpoints_damaged'       # moved aside, never deleted
CHECKPOINTS_DISCARDED = 'checkpoints_discarded'   # after `train --from_step N`
LOG = 'train.log'                                 # a sweep's run's output
LOCK = '.lock'
# TensorBoard's event files (tensorboardX names the writer's); the HParams
# session's own, replaced as a whole: it sorts before the writer's files, so
# TensorBoard meets the session first. Its temporary file's name has no
# 'tfevents' in it: TensorBoard would read it half-written.
EVENTS = 'events.out.tfevents.*'
HPARAMS_EVENTS = 'events.out.tfevents.0.hparams'
HPARAMS_TMP = '.hparams.tmp'
WANDB = 'wandb'
PROFILE = 'profile'
# A sweep directory's own.
SWEEP_RECORD = 'sweep.json'
SWEEP_LOCK = '.sweep.lock'
REPORT_HTML = 'report.html'
SLURM_LOGS = 'slurm'          # submitit's folder: SLURM_LOGS/JOB_ID/ per job
# A search directory's own (search.py): a run directory per Optuna trial,
# trial_NNN/, and the sweep of `search --confirm` in confirm/.
SEARCH_RECORD = 'search.json'
SEARCH_LOCK = '.search.lock'
STUDY_JOURNAL = 'study.journal'   # Optuna's journal file: the study itself
CONFIRM = 'confirm'
# The key a recorded config holds the version of its form in (`as_current`).
VERSION_KEY = 'config_version'

# Config keys that never change what a run computes: logging, evaluation and
# checkpoint intervals, tracking, scheduling, input-pipeline throughput, and
# the version of the config's form that recorded it.
NEUTRAL_KEYS = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                'keep_checkpoints', 'profile_steps', 'tracking.*', 'slurm.*', 'data.num_workers',
                'data.num_threads', 'data.prefetch', VERSION_KEY)
# Keys a resumed run may change: the neutral ones but the number of data
# workers (the data iterator's saved position is that of its worker layout:
# another count would resume on other batches, or not at all), and its length.
# `model.conv_impl` too: the convolutions' implementation moves only rounding,
# and a run may go on on another platform (a CPU's 'cpu_matmul', a GPU's 'xla').
RESUMABLE_KEYS = tuple(k for k in NEUTRAL_KEYS if k != 'data.num_workers') + (
    'total_steps', 'num_epochs', 'model.conv_impl')
# Keys whose 'auto' a run resolves when it starts and records resolved in
# config.json: 'auto' on either side matches any value, so a sweep file that
# says 'auto' finds the runs it started up to date.
RESOLVED_AUTO = ('model.conv_impl',)
# Keys no resume can change, even when allowed to change the config.
FIXED_ON_RESUME = ('data.num_workers',)


# --- Config versions -----------------------------------------------------------

# A run records its config (config.json, and each checkpoint's copy) with
# `config_version`, the version of the config's form that wrote it; a config
# recorded before versions existed is version 0. `as_current` reads a recorded
# config as today's by applying the migrations from its version on.
#
# To change the config's form (add a key, rename one, change a value's type):
#   1. write a step `_vN(config)` that takes a config of version N-1 to N in
#      place: an added key at the value the runs before it had in effect (what
#      they computed, which need not be today's default), a renamed key or an
#      old value in today's form;
#   2. append it to `MIGRATIONS` (CONFIG_VERSION follows);
#   3. add a line to tests/test_rundir.py's migration test.
# A step must leave a config that has today's form as it is (`_add` and
# `_convert` do): a config recorded without a version may be today's.
# A key added in the same release as the latest step, before any run recorded
# that version, may join that step instead of a new one.


def _add(config: dict, added: Mapping[str, Any]) -> None:
  """Keys a recorded config lacks, at the values its run had in effect."""
  for key, value in added.items():
    parent, leaf = _parent(config, key)
    parent.setdefault(leaf, value)


def _convert(config: dict, key: str, old_type: type, values: Mapping) -> None:
  """An old value of `key` (of `old_type`) in today's form."""
  parent, leaf = _parent(config, key)
  if type(parent.get(leaf)) is old_type and parent[leaf] in values:
    parent[leaf] = values[parent[leaf]]


def _v1(config: dict) -> None:
  """The keys added before configs recorded a version (an ImageNet run
  started before `data.object_size` existed resumes; a demo run drawn with
  the old objects is a change), and `data.color_distort`, once a bool."""
  _add(config, {
      'data.object_size': [0.16, 0.26], 'per_device_batch': 0, 'fit_batch': False,
      'optim.grad_accum_steps': 1, 'model.bn_update_per_group': False,
      'data.crop_sampler': 'uniform_area', 'data.crop_attempts': 10,
      'data.min_object_covered': 0.1, 'data.eval_exclude': '',
      'model.bn_scale': False, 'model.avg_pool_include_pad': False,
      'model.imports': '', 'init_from': '', 'freeze': '', 'slurm.tasks_per_node': 1,
      'profile_steps': 0, 'model.modules_per_grid': [3, 4, 2],
      # The backend chose the convolutions' implementation, as 'auto' does.
      'model.conv_impl': 'auto'})
  _convert(config, 'data.color_distort', bool, {False: 'none'})


# MIGRATIONS[n] takes a recorded config of version n to version n + 1.
MIGRATIONS = (_v1,)
CONFIG_VERSION = len(MIGRATIONS)


def as_current(recorded: Mapping) -> dict:
  """A recorded config in today's form (a copy), `config_version` included:
  the migrations from the version that recorded it (0 when it says none).
  A config of a newer version than this code's is a `UserError`."""
  config = jsonable(recorded)
  # A config recorded before versions existed names none: version 0.
  version = config[VERSION_KEY] if VERSION_KEY in config else 0
  if type(version) is not int or not 0 <= version <= CONFIG_VERSION:
    raise UserError(f'a config recorded with config_version {version!r}: this version '
                    f'of inception_jax reads versions 0 to {CONFIG_VERSION}; '
                    f'use the version that wrote it, or a newer one')
  for step in MIGRATIONS[version:]:
    step(config)
  config[VERSION_KEY] = CONFIG_VERSION
  return config


def versioned(config: Mapping) -> dict:
  """Today's config as a run records it: a JSON copy with `config_version`."""
  return {**jsonable(config), VERSION_KEY: CONFIG_VERSION}


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
             for f in (CONFIG, RESULT, CHECKPOINTS))


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
  exit_code = ExitCode.DISK_FULL

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
  those matching `ignore` (exact keys, or 'prefix.*') and a `RESOLVED_AUTO`
  key that one of them leaves at 'auto'."""
  fa, fb = (flatten(as_current(c)) for c in (a, b))
  ignore = tuple(ignore)
  return sorted(k for k in fa.keys() | fb.keys()
                if fa.get(k, '<missing>') != fb.get(k, '<missing>')
                and not matches(k, ignore)
                and not (k in RESOLVED_AUTO and 'auto' in (fa.get(k), fb.get(k))))


def config_differences(a: Mapping, b: Mapping, *,
                       ignore: Iterable[str] = ()) -> list[str]:
  """`changed_keys` as 'key: value in a -> value in b' lines."""
  fa, fb = flatten(jsonable(a)), flatten(jsonable(b))
  show = lambda flat, k: json.dumps(flat[k]) if k in flat else 'missing'
  return [f'{k}: {show(fa, k)} -> {show(fb, k)}'
          for k in changed_keys(a, b, ignore=ignore)]


# --- Locks ---------------------------------------------------------------------

class LockHeld(UserError):
  """Another process holds a run's lock (a trainer), a sweep's or a search's:
  the one wording of it, "another process is training in DIR (pid N)", then `hint`,
  what to do about it. `pid` is the one the holder wrote into the file."""

  def __init__(self, path: str, pid: str, hint: str = ''):
    directory = os.path.dirname(path) or '.'
    holder = {SWEEP_LOCK: 'another sweep is running',
              SEARCH_LOCK: 'another search is running'}.get(os.path.basename(path),
                                                            'another process is training')
    super().__init__(f'{holder} in {directory} (pid {pid})' + (f'; {hint}' if hint else ''))
    self.pid = pid


def lock(path: str, hint: str = '') -> IO:
  """Take an exclusive lock (flock, not waiting) on `path` and write this
  process's id into it. Returns the open file: closing it, or the end of the
  process however it ends, releases the lock. Held elsewhere: `LockHeld`
  (with `hint`); a filesystem without locks (some network filesystems): a
  `UserError`."""
  f = open(path, 'a+')
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    pid = f.read().strip() or 'unknown'
    f.close()
    raise LockHeld(path, pid, hint) from None
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


# Errors of opening a directory this process may not write to (an archive, a
# colleague's runs): no trainer writes there either.
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


# --- Directories ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunDir:
  """A run directory: the path of everything a run keeps there, its lock,
  and its JSON files read and written (docs/ARCHITECTURE.md, "Run
  directory"). `path` as given: relative stays relative."""
  path: str

  def _join(self, name: str) -> str:
    return os.path.join(self.path, name)

  config = property(lambda self: self._join(CONFIG))
  metrics = property(lambda self: self._join(METRICS))
  result = property(lambda self: self._join(RESULT))
  classes = property(lambda self: self._join(CLASSES))
  checkpoints = property(lambda self: self._join(CHECKPOINTS))
  checkpoints_damaged = property(lambda self: self._join(CHECKPOINTS_DAMAGED))
  checkpoints_discarded = property(lambda self: self._join(CHECKPOINTS_DISCARDED))
  log = property(lambda self: self._join(LOG))
  lock_file = property(lambda self: self._join(LOCK))
  events = property(lambda self: self._join(EVENTS))          # a pattern
  hparams_events = property(lambda self: self._join(HPARAMS_EVENTS))
  hparams_tmp = property(lambda self: self._join(HPARAMS_TMP))
  wandb = property(lambda self: self._join(WANDB))
  wandb_run_id = property(lambda self: os.path.join(self.wandb, 'run_id'))
  profile = property(lambda self: self._join(PROFILE))
  write_probe = property(lambda self: self._join('.write_test'))

  def discarded_result(self, stamp: str) -> str:
    """Where `train --from_step` moves a finished run's result.json."""
    return self._join(f'result.discarded-{stamp}.json')

  def stale(self, stamp: str) -> str:
    """Where `sweep --rerun-stale` moves the run (beside it, never deleted)."""
    return f'{self.path}.stale-{stamp}'

  def seed(self, k: int) -> RunDir:
    """The run directory of seed K of a sweep run with seeds."""
    return RunDir(self._join(f'seed_{k}'))

  # What the directory holds now.

  def finished(self) -> bool:
    return os.path.exists(self.result)

  def has_checkpoint(self) -> bool:
    return os.path.isdir(self.checkpoints) and any(
        n.isdigit() for n in os.listdir(self.checkpoints))

  def holds_run(self) -> bool:
    return holds_run(self.path)

  def seeds(self) -> list[int]:
    return seed_dirs(self.path)

  # Its files, read and written.

  def read_config(self) -> dict | None:
    """config.json in today's form (`as_current`), or None without one."""
    recorded = read_json(self.config)
    return None if recorded is None else as_current(recorded)

  def write_config(self, config: Mapping) -> None:
    """Record today's config, with its `config_version`."""
    write_json(self.config, versioned(config))

  def read_result(self) -> dict | None:
    return read_json(self.result)

  def write_result(self, result: Mapping) -> None:
    write_json(self.result, dict(result))

  def read_metrics(self) -> list[dict]:
    return read_metrics(self.path)

  def truncate_metrics(self, step: int) -> int:
    return truncate_metrics(self.path, step)

  @contextlib.contextmanager
  def lock(self, *, hint: str = '', enabled: bool = True, reading: bool = False):
    """Hold WORKDIR/.lock while inside: a trainer's, or a reader's that must
    not work beside one (`LockHeld` with `hint` when another holds it).
    `enabled` False takes none (the processes of a run but the first).
    `reading`: a directory this process may not write to is read unlocked."""
    held = contextlib.nullcontext()
    if enabled:
      try:
        held = lock(self.lock_file, hint)
      except OSError as e:
        if not (reading and e.errno in READ_ONLY):
          raise
    with held:
      yield self


@dataclasses.dataclass(frozen=True)
class _DriverDir:
  """What a sweep's and a search's directories share: a record (RECORD), the
  driver's lock (LOCK; `LockHeld` names which driver holds it), the report and
  submitit's SLURM logs."""
  path: str
  RECORD: ClassVar[str] = ''
  LOCK: ClassVar[str] = ''

  record = property(lambda self: os.path.join(self.path, self.RECORD))
  lock_file = property(lambda self: os.path.join(self.path, self.LOCK))
  report_html = property(lambda self: os.path.join(self.path, REPORT_HTML))
  slurm_logs = property(lambda self: os.path.join(self.path, SLURM_LOGS))

  def read_record(self, default: Any = None) -> Any:
    return read_json(self.record, default)

  def write_record(self, record: Mapping) -> None:
    write_json(self.record, record)

  def lock(self) -> IO:
    return lock(self.lock_file)


class SweepDir(_DriverDir):
  """A sweep directory: sweep.json, .sweep.lock, its report, and a run
  directory per run, NAME/ or NAME/seed_K/."""
  RECORD, LOCK = SWEEP_RECORD, SWEEP_LOCK

  def run(self, name: str) -> RunDir:
    """The run directory of run NAME (or NAME/seed_K)."""
    return RunDir(os.path.join(self.path, name))


def trial_name(number: int) -> str:
  """The run directory of Optuna trial `number`, relative to the search's."""
  return f'trial_{number:03d}'


class SearchDir(_DriverDir):
  """A search directory: search.json, .search.lock, its report, Optuna's
  journal of the study, a run directory per trial (trial_NNN/) and the sweep
  directory of its confirmation (confirm/)."""
  RECORD, LOCK = SEARCH_RECORD, SEARCH_LOCK

  journal = property(lambda self: os.path.join(self.path, STUDY_JOURNAL))
  confirm = property(lambda self: os.path.join(self.path, CONFIRM))

  def trial(self, number: int) -> RunDir:
    """The run directory of trial `number` (DIR/trial_NNN)."""
    return RunDir(os.path.join(self.path, trial_name(number)))
