"""Sweeps: `sweeps/NAME.py` defines `get_sweep(arg)` returning named runs, and
the launchers that train them.

Each run is a dict (or `Run`) with a `name`, a `config` (`FILE.py[:ARG]`),
optional `overrides` ({'optim.name': 'momentum', ...}), optional `paper`
figures to print beside ours ({'top1_error': 23.4, 'cost_bn_ops': 3.8}) and
optional `seeds` ([0, 1, 2]): the run is repeated once per seed, each seed an
ordinary run in DIR/NAME/seed_K with `config.seed` = K. A run without seeds
is one run of its config's seed in DIR/NAME, as sweeps have always been.

`run_sweep` trains every run in DIR/NAME (seeds in seed-major order: each
run's first seed, then each run's second, …), N at a time on this machine
(`LocalLauncher`) or as a SLURM job array through submitit (`SlurmLauncher`).
A run whose `result.json` exists is skipped; one that was interrupted resumes
from its checkpoint (the trainer does that by itself); one that fails is
reported and the others go on. A run that finished (or saved a checkpoint)
under another config than the sweep file now gives it is stale: reported,
not retrained, unless asked to (its directory is then moved aside).
`DIR/sweep.json` records the runs, their paper figures and the state of each
run directory (keyed NAME or NAME/seed_K), for `report.py`; `DIR/.sweep.lock`
keeps a second sweep out of the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable

import ml_collections

from inception_jax import config_lib, rundir, specs
from inception_jax.errors import ConfigError, ExitCode, UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  config: str
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  paper: dict[str, Any] = dataclasses.field(default_factory=dict)
  seeds: list[int] | None = None

  def per_seed(self) -> list[Run]:
    """One run per seed, named after its directory (NAME/seed_K) and training
    with `seed` K; a run without seeds is itself (DIR/NAME)."""
    if self.seeds is None:
      return [self]
    return [dataclasses.replace(self, name=rundir.seed_name(self.name, k), seeds=None,
                                overrides={**self.overrides, 'seed': k})
            for k in self.seeds]

  def build_config(self) -> ml_collections.ConfigDict:
    return config_lib.load(self.config, self.overrides)

  def train_args(self, workdir: str, group: str) -> list[str]:
    """`train` arguments of this run in `workdir`, with absolute paths: the
    run trains in the same place whatever directory it is started from."""
    args = ['--config', config_lib.absolute(self.config),
            '--workdir', os.path.abspath(workdir)]
    args += [f'--config.{k}={cli_value(v)}' for k, v in self.overrides.items()]
    return args + [f'--config.tracking.wandb_group={group}',
                   '--config.tracking.progress=false']


def label(runs: list[Run]) -> list[Run]:
  """The runs (one per seed) with what dashboards show of them, as tracking
  overrides: the name ROW/seed_K (wandb's run name; TensorBoard's is the
  directory's), the row (wandb's job type), the `key=value` pairs the row
  changes against the sweep's first row (wandb's tags) and the keys that
  vary across the sweep, then `seed` (first in TensorBoard's HParams).
  Only keys the run's config has are set (a config written before them
  trains unlabelled rather than failing); a row whose config cannot be built
  gets none (training reports the error)."""
  rows = list(dict.fromkeys(r.name.partition('/')[0] for r in runs))
  configs = {}
  for run in runs:
    row = run.name.partition('/')[0]
    if row not in configs:
      try:
        configs[row] = rundir.flatten(run.build_config().to_dict())
      except UserError:
        configs[row] = None
  built = [c for c in configs.values() if c is not None]
  keys = sorted(set().union(*built)) if built else []
  varying = [k for k in keys if k != 'seed' and not rundir.matches(k, rundir.NEUTRAL_KEYS)
             and len({repr(c.get(k)) for c in built}) > 1]
  seeds = {run.overrides.get('seed') for run in runs} - {None}
  first = configs.get(rows[0]) if rows else None
  labelled = []
  for run in runs:
    row = run.name.partition('/')[0]
    flat = configs[row]
    tracking = {}
    if flat is not None:
      tracking = {
          'tracking.run_name': run.name, 'tracking.job_type': row,
          'tracking.hparams_first': varying + (['seed'] if len(seeds) > 1 else []),
          'tracking.tags': [tag(k, flat.get(k)) for k in varying
                            if first is not None and flat.get(k) != first.get(k)]}
      tracking = {k: v for k, v in tracking.items() if k in flat}
    labelled.append(dataclasses.replace(run, overrides={**run.overrides, **tracking}))
  return labelled


def tag(key: str, value: Any) -> str:
  """'optim.name=momentum', cut to wandb's 64 characters a tag."""
  text = f'{key}={value}'
  return text if len(text) <= 64 else text[:63] + '…'


def cli_value(value: Any) -> str:
  """VALUE as a `--config.KEY=VALUE` argument writes it (what config loading parses)."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (list, tuple, dict)):
    return repr(value)
  return str(value)


def sweep_name(path_arg: str) -> str:
  """`sweeps/table3_ablation.py:scale=demo` → 'table3_ablation'."""
  return os.path.splitext(os.path.basename(path_arg.partition(':')[0]))[0]


def parse_seeds(value: str | None) -> list[int] | None:
  """`--seeds N` → [0, ..., N-1]; None when not given."""
  if value is None:
    return None
  if not value.strip().isdigit() or int(value) < 1:
    raise UserError(f'--seeds takes a number of seeds >= 1, got {value!r}')
  return list(range(int(value)))


def _check_seeds(path: str, run: Run) -> Run:
  """`run` with its seeds as a list; bad seeds are a ConfigError."""
  if run.seeds is None:
    return run
  seeds = list(run.seeds) if isinstance(run.seeds, (list, tuple)) else None
  if not seeds or any(type(k) is not int or k < 0 for k in seeds):
    raise ConfigError(f'{path}: run {run.name}: seeds must be a non-empty list of '
                      f'integers >= 0, got {run.seeds!r}')
  if len(set(seeds)) < len(seeds):
    raise ConfigError(f'{path}: run {run.name}: duplicate seeds in {seeds}')
  if 'seed' in run.overrides:
    raise ConfigError(f'{path}: run {run.name} overrides seed and has seeds; '
                      f'give one or the other')
  return dataclasses.replace(run, seeds=seeds)


def load_sweep(path_arg: str, seeds: list[int] | None = None) -> list[Run]:
  """Expand `sweeps/NAME.py[:ARG]` (or a shipped sweep by NAME[:ARG]) into its
  runs; names must be unique. `seeds` replaces every run's seeds (`sweep --seeds N`)."""
  path, _, arg = path_arg.partition(':')
  module = config_lib.load_module(path, kind='sweeps')
  if not hasattr(module, 'get_sweep'):
    raise ConfigError(f'{path} defines no get_sweep(arg)')

  def run(i: int, r) -> Run:
    """Run(**r), a misspelled or missing field being one line naming the run."""
    if isinstance(r, Run):
      return r
    if not hasattr(r, 'keys'):
      raise ConfigError(f'{path}: run {i} of get_sweep() is a {type(r).__name__}, '
                        f'not a dict or Run')
    given, fields = list(r.keys()), [f.name for f in dataclasses.fields(Run)]
    name = repr(r['name']) if 'name' in given else f'{i} (no name)'
    unknown = [k for k in given if k not in fields]
    required = [f.name for f in dataclasses.fields(Run)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [f for f in required if f not in given]
    if unknown or missing:
      problem = (f'unknown field(s) {", ".join(map(repr, unknown))}' if unknown else
                 f'no {" and no ".join(map(repr, missing))}')
      raise ConfigError(f'{path}: run {name} has {problem}; a run has the fields '
                        f'{", ".join(fields)}')
    return Run(**r)

  runs = [run(i, r) for i, r in enumerate(module.get_sweep(arg or None))]
  if seeds is not None:
    runs = [dataclasses.replace(r, seeds=seeds) for r in runs]
  runs = [_check_seeds(path, r) for r in runs]
  names = [r.name for r in runs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ConfigError(f'{path}: duplicate run names {duplicates}')
  bad = [n for n in names if not n or os.sep in n or n.startswith('.')]
  if bad:
    raise ConfigError(f'{path}: run names must be plain directory names: {bad}')
  return runs


def select(runs: list[Run], only: str | None) -> list[Run]:
  """The runs named in `only` ('a,b'), in sweep order; unknown names are an error."""
  if not only:
    return runs
  wanted = [n.strip() for n in only.split(',') if n.strip()]
  unknown = sorted(set(wanted) - {r.name for r in runs})
  if unknown:
    raise UserError(f'--only: no run named {", ".join(unknown)}; the sweep has '
                    f'{", ".join(r.name for r in runs)}')
  return [r for r in runs if r.name in wanted]


# --- The sweep record ----------------------------------------------------------

class Record:
  """DIR/sweep.json: the sweep, its runs and the state of each run directory,
  NAME or NAME/seed_K (rewritten atomically on every change, so a report can
  read it while runs go on)."""

  def __init__(self, directory: str, path_arg: str, runs: list[Run],
               command: str | None = None):
    self.path = rundir.SweepDir(directory).record
    try:
      previous = rundir.read_json(self.path, {}).get('status', {})
    except UserError as e:     # rebuilt from the run directories' own files
      log.warning('%s; starting a new record', e)
      previous = {}
    self.data = {
        'sweep': path_arg, 'name': sweep_name(path_arg),
        'provenance': provenance(command),
        'runs': [dataclasses.asdict(r) for r in runs],
        'status': {r.name: previous.get(r.name, {'state': 'pending'})
                   for run in runs for r in run.per_seed()},
    }
    self._lock = threading.Lock()
    self._write()

  def set(self, name: str, state: str, message: str = '',
          exit_code: int | None = None) -> None:
    with self._lock:
      self.data['status'][name] = dict(state=state, message=message,
                                       exit_code=exit_code, time=time.time())
      self._write()

  def state(self, name: str) -> dict:
    return self.data['status'][name]

  def _write(self) -> None:
    rundir.write_json(self.path, self.data)


def provenance(command: str | None) -> dict:
  """Where the latest invocation of the sweep comes from: the command, the
  commit of the package's checkout (None outside git) and whether files
  differ from it, the time, the host. (Each run's result.json records the
  commit that trained it.)"""
  return {'command': command, **rundir.source_commit(),
          'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'host': os.uname().nodename}


def finished(workdir: str) -> bool:
  return rundir.RunDir(workdir).finished()


def config_changes(workdir: str, config: dict) -> list[str]:
  """How `config` differs from the config the run in `workdir` recorded, in
  what would make its result stale ('key: old -> new' each): for a finished
  run anything but `rundir.NEUTRAL_KEYS`, for one with a checkpoint what the
  trainer would refuse to resume under. [] for a run that has neither (it
  starts afresh) or recorded no config."""
  if finished(workdir):
    ignore = rundir.NEUTRAL_KEYS
  elif rundir.RunDir(workdir).has_checkpoint():
    ignore = rundir.RESUMABLE_KEYS
  else:
    return []
  recorded = rundir.read_json(rundir.RunDir(workdir).config)
  return [] if recorded is None else rundir.config_differences(
      recorded, rundir.versioned(config), ignore=ignore)


def stale_message(workdir: str, changes: list[str], shown: int = 5) -> str:
  """'finished with a different config (key: old -> new, ...)'."""
  listed = ', '.join(changes[:shown])
  if len(changes) > shown:
    listed += f' and {len(changes) - shown} more'
  how = 'finished' if finished(workdir) else 'interrupted'
  return f'{how} with a different config ({listed})'


def move_aside(workdir: str) -> str:
  """Rename a stale run's directory (or a run's directory of seeds) to
  WORKDIR.stale-YYYYmmdd-HHMMSS (never deleted); returns the new path.
  Refused while a process trains in it or in one of its seeds."""
  run = rundir.RunDir(workdir)
  with contextlib.ExitStack() as held:
    for each in [run, *map(run.seed, run.seeds())]:
      held.enter_context(each.lock(hint='stop it before --rerun-stale'))
    stamp = time.strftime('%Y%m%d-%H%M%S')
    target, n = run.stale(stamp), 1
    while os.path.exists(target):
      n += 1
      target = run.stale(f'{stamp}-{n}')
    try:
      os.rename(workdir, target)
    except OSError as e:
      raise UserError(f'cannot move {workdir} aside: {e.strerror or e}') from None
  return target


def layout_conflict(workdir: str, run: Run) -> str:
  """Why DIR/NAME cannot take `run` as laid out now ('' when it can): it
  holds a single-seed run where the run now has seeds, or seed directories
  where it has none."""
  if run.seeds is None:
    found = rundir.seed_dirs(workdir)
    return (f'{workdir} holds runs of seeds {_listed(found)}; the sweep now trains '
            f'one run there' if found else '')
  return (f'{workdir} holds a single-seed run; the sweep now trains seeds '
          f'{_listed(run.seeds)} in it' if rundir.holds_run(workdir) else '')


def _listed(seeds: list[int]) -> str:
  return ', '.join(map(str, seeds))


@contextlib.contextmanager
def lock_directory(directory: str, layout=rundir.SweepDir, what: str = 'sweep'):
  """Create the sweep directory (or another driver's: `layout`, `what`) and
  hold its lock while inside: a second driver on the same directory stops at
  once, naming the first's pid."""
  try:
    os.makedirs(directory, exist_ok=True)
    held = layout(directory).lock()
  except OSError as e:
    raise UserError(f'cannot write the {what} directory {directory}: '
                    f'{e.strerror or e}') from None
  with held:
    yield


# --- Launchers -----------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
  # 'done' | 'pruned' (a search trial its pruner stopped: finished early) |
  # 'failed' | 'interrupted' | 'stale' | 'skipped' | 'pending'
  state: str
  exit_code: int | None = None
  message: str = ''


class LocalLauncher:
  """Each run as a `python -m inception_jax train` subprocess, `parallel` at a time; its
  output goes to DIR/NAME/train.log. SIGINT/SIGTERM reach the runs, which
  save a checkpoint and stop; the sweep then stops too."""

  def __init__(self, parallel: int = 1):
    if parallel < 1:
      raise UserError(f'--parallel must be >= 1, got {parallel}')
    self.parallel = parallel

  def launch(self, jobs: list[tuple[Run, str]], group: str,
             on_start: Callable, on_end: Callable) -> None:
    queue, running, stopping = list(jobs), {}, []

    def stop(signum, frame):
      stopping.append(signum)
      for proc in running.values():
        proc[0].send_signal(signal.SIGTERM)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
      while queue or running:
        while queue and len(running) < self.parallel and not stopping:
          run, workdir = queue.pop(0)
          running[run.name] = (self._start(run, workdir, group), run, workdir)
          on_start(run)
        for name, (proc, run, workdir) in list(running.items()):
          if proc.poll() is not None:
            del running[name]
            on_end(run, _outcome(proc.returncode, workdir, stopping=bool(stopping)))
        if stopping and not running:
          break
        time.sleep(0.2)
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
    if stopping:
      raise SweepInterrupted(signal.Signals(stopping[0]).name)

  @staticmethod
  def _start(run: Run, workdir: str, group: str) -> subprocess.Popen:
    os.makedirs(workdir, exist_ok=True)
    # `python -m inception_jax train` finds this very package (installed or not).
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, (PACKAGE_PARENT,
                                                      env.get('PYTHONPATH'))))
    # Own process group: a Ctrl-C on the terminal reaches the sweep, which
    # passes one SIGTERM on (a second SIGINT would stop a run without saving).
    with open(rundir.RunDir(workdir).log, 'a') as log:
      return subprocess.Popen(
          [sys.executable, '-m', 'inception_jax', 'train', *run.train_args(workdir, group)],
          env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
          start_new_session=True)


PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# How a run ends that the sweep's own stop signal ended before it could save
# (killed by it while the interpreter started): interrupted, not failed.
KILLED_BY_STOP = {-signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT}


def _outcome(exit_code: int, workdir: str, stopping: bool = False) -> Outcome:
  if exit_code == ExitCode.OK and finished(workdir):
    return Outcome('done', ExitCode.OK)
  if exit_code == ExitCode.PRUNED and finished(workdir):
    return _pruned(workdir)
  message = last_error(rundir.RunDir(workdir).log) or f'exit status {exit_code}'
  interrupted = (exit_code == ExitCode.INTERRUPTED
                 or (stopping and exit_code in KILLED_BY_STOP))
  return Outcome('interrupted' if interrupted else 'failed', exit_code, message)


def _pruned(workdir: str) -> Outcome:
  """A search trial that the study's pruner stopped: finished early, saved,
  not failed (`train.Pruned`)."""
  result = rundir.RunDir(workdir).read_result() or {}
  return Outcome('pruned', ExitCode.PRUNED,
                 f"pruned at step {result.get('pruned_at_step', '?')}")


def last_error(log_path: str) -> str:
  """The `error: ...` line a failed run printed, else its last line."""
  try:
    with open(log_path, errors='replace') as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return ''
  errors = [line for line in lines if line.startswith('error:')]
  return (errors or lines or [''])[-1][:500]


class SweepInterrupted(UserError):
  """SIGINT/SIGTERM stopped the sweep; its runs saved checkpoints."""
  exit_code = ExitCode.INTERRUPTED


class SlurmLauncher:
  """One SLURM job per run through submitit, submitted as job arrays (one per
  distinct resource request, from each run's `config.slurm`); waits for them.
  A run starts `slurm.tasks_per_node` tasks on each of its `slurm.nodes`;
  several tasks join through `jax.distributed.initialize()`
  (`parallel.initialize` detects SLURM)."""

  def __init__(self, directory: str, train_job: Callable[[list[str]], dict], *,
               poll_seconds: float = 5.0):
    """`train_job(args)` is what each task runs (`cli.train_job`): `train ARGS`
    in the task's process, returning {'exit_code': N}."""
    self.folder = os.path.join(rundir.SweepDir(os.path.abspath(directory)).slurm_logs, '%j')
    self.train_job, self.poll_seconds = train_job, poll_seconds

  def launch(self, jobs: list[tuple[Run, str]], group: str,
             on_start: Callable, on_end: Callable) -> None:
    import submitit
    submitted = []
    for resources, batch in _group_by_resources(jobs).items():
      executor = submitit.SlurmExecutor(folder=self.folder)
      executor.update_parameters(job_name=group, **executor_parameters(resources))
      with executor.batch():
        pending = [(executor.submit(self.train_job, run.train_args(workdir, group)),
                    run, workdir)
                   for run, workdir in batch]
      for job, run, workdir in pending:
        os.makedirs(workdir, exist_ok=True)
        on_start(run, f'SLURM job {job.job_id}')
        submitted.append((job, run, workdir))
    try:
      while submitted:
        for item in list(submitted):
          job, run, workdir = item
          if job.done() or vanished(job):
            submitted.remove(item)
            on_end(run, job_outcome(job, workdir))
        time.sleep(self.poll_seconds if submitted else 0)
    except KeyboardInterrupt:
      # The jobs go on without us; a rerun of the sweep waits for them.
      raise SweepInterrupted('SIGINT (the SLURM jobs keep running; rerun the '
                             'sweep to wait for them)') from None

  @staticmethod
  def queued_job(status: dict) -> str | None:
    """The SLURM job a run's recorded status names, if still queued or running."""
    detail = status.get('message', '')
    if status.get('state') != 'running' or not detail.startswith('SLURM job '):
      return None
    job_id = detail.split()[-1]
    # Unknown (squeue failed): assume it is still there rather than start a second.
    return job_id if in_queue(job_id) is not False else None


def in_queue(job_id: str) -> bool | None:
  """Whether SLURM still lists the job (pending or running); None when squeue
  cannot tell (the controller restarting, a timeout)."""
  try:
    proc = subprocess.run(['squeue', '-h', '-j', str(job_id)], capture_output=True,
                          text=True, timeout=60)
  except (OSError, subprocess.TimeoutExpired):
    return None
  if proc.returncode == 0:
    return bool(proc.stdout.strip())
  return False if 'invalid job id' in proc.stderr.lower() else None


# When each SLURM job (by id) was first seen out of the queue without a result.
_LEFT_QUEUE: dict[str, float] = {}


def vanished(job, grace_seconds: float = 60.0) -> bool:
  """A job that left the queue without writing its result (cancelled, killed
  with its node): submitit alone would wait for it forever without `sacct`.
  A failing squeue says nothing: the job is not counted as gone."""
  listed = in_queue(job.job_id)
  if listed is None:
    return False
  if listed:
    _LEFT_QUEUE.pop(job.job_id, None)
    return False
  first = _LEFT_QUEUE.setdefault(job.job_id, time.time())
  return time.time() - first > grace_seconds


def _group_by_resources(jobs) -> dict[tuple, list]:
  groups: dict[tuple, list] = {}
  for run, workdir in jobs:
    try:
      slurm = specs.RunSpec.from_config(run.build_config()).slurm
    except UserError:
      slurm = CLUSTER_DEFAULTS    # the job itself reports the bad config
    groups.setdefault(slurm, []).append((run, workdir))
  return groups


# A job whose config is bad asks for nothing but one task: it only reports the error.
CLUSTER_DEFAULTS = specs.SlurmSpec(gpus_per_node=0, cpus_per_task=0, time_minutes=0)


def executor_parameters(slurm: specs.SlurmSpec) -> dict:
  """config.slurm → sbatch options of submitit's SlurmExecutor. 0 or '' leaves
  the cluster's default: the option is not passed at all (None), so
  `time_minutes=0` is the partition's limit, not `--time=0` ("no limit")."""
  given = lambda value: value or None
  return dict(nodes=slurm.nodes, ntasks_per_node=slurm.tasks_per_node,
              time=given(slurm.time_minutes), cpus_per_task=given(slurm.cpus_per_task),
              partition=given(slurm.partition), gpus_per_node=given(slurm.gpus_per_node),
              mem=f'{slurm.mem_gb}GB' if slurm.mem_gb else None)


def job_outcome(job, workdir: str) -> Outcome:
  if not job.done():
    return Outcome('failed', None, f'SLURM job {job.job_id} left the queue without '
                   f'a result (cancelled or killed); rerun the sweep to resume it')
  try:
    # Every task's exit status (a run of several tasks): the first that is
    # not 0, so that one failed or interrupted process is the run's outcome.
    codes = [result['exit_code'] for result in job.results()]
    code = next((c for c in codes if c != 0), 0)
  except Exception as e:     # noqa: BLE001 — submitit wraps a crash of the job
    code, crash = None, str(e).strip().splitlines()[-1][:500]
  else:
    crash = ''
  if code == 0 and finished(workdir):
    return Outcome('done', 0)
  if code == ExitCode.PRUNED and finished(workdir):
    return _pruned(workdir)
  lines = [line for line in (job.stderr() or '').splitlines() if line.startswith('error:')]
  message = lines[-1] if lines else crash or f'exit status {code}'
  return Outcome('interrupted' if code == ExitCode.INTERRUPTED else 'failed', code, message)


# --- The sweep -----------------------------------------------------------------

def run_sweep(path_arg: str, directory: str, *, launcher, only: str | None = None,
              rerun_stale: bool = False, seeds: list[int] | None = None,
              echo: Callable[[str], None] = print,
              command: str | None = None) -> dict[str, Outcome]:
  """Train the sweep's runs, each seed in its own run directory (DIRECTORY/NAME
  or DIRECTORY/NAME/seed_K), holding DIRECTORY/.sweep.lock throughout; returns
  the outcome of each selected run directory. `seeds` replaces the sweep
  file's. A stale run is reported, or with `rerun_stale` moved aside and
  trained again. `command` (the command line) goes into sweep.json."""
  all_runs = load_sweep(path_arg, seeds)
  selected = {r.name for r in select(all_runs, only)}
  with lock_directory(directory):
    record = Record(directory, path_arg, all_runs, command)
    outcomes, jobs_per_run = {}, []
    for run in all_runs:
      jobs_per_run.append(jobs := [])
      conflict = layout_conflict(os.path.join(directory, run.name), run)
      if conflict and run.name in selected and rerun_stale:
        moved = move_aside(os.path.join(directory, run.name))
        echo(f'[{run.name}] stale: {conflict}; moved to {moved}, training it again')
        conflict = ''
      elif conflict:
        echo(f'[{run.name}] stale: {conflict}')
      for one in run.per_seed():
        if conflict:
          record.set(one.name, 'stale', conflict)
          outcomes[one.name] = Outcome('stale', None, conflict)
        elif run.name in selected:
          jobs.append(one)
        else:
          _record_stale(record, one, os.path.join(directory, one.name), echo)
    # Seed-major order: every run's first seed, then every run's second, …
    # A full table exists early, and the later seeds of a run reuse the
    # programs its first seed compiled (also when several train at once).
    jobs = [one for wave in itertools.zip_longest(*jobs_per_run) for one in wave if one]
    labelled = {r.name: r for r in label([one for run in all_runs
                                          for one in run.per_seed()])}
    outcomes.update(_train([labelled[r.name] for r in jobs], directory, record, launcher,
                           rerun_stale, sweep_name(path_arg), echo))
  return {r.name: outcomes[r.name] for run in all_runs if run.name in selected
          for r in run.per_seed() if r.name in outcomes}


def _changes(run: Run, workdir: str) -> list[str] | None:
  """`config_changes` of the run, or None when the sweep file's config for it
  cannot be built (the trainer then reports why)."""
  try:
    config = run.build_config().to_dict()
  except UserError:
    return None
  return config_changes(workdir, config)


def _record_stale(record: Record, run: Run, workdir: str, echo) -> None:
  """A run left out by --only is not trained, but whether it is stale is
  recorded (a finished one the sweep file has been restored for is done)."""
  changes = _changes(run, workdir)
  if changes:
    record.set(run.name, 'stale', stale_message(workdir, changes))
    echo(f'[{run.name}] stale: {record.state(run.name)["message"]}')
  elif (changes == [] and finished(workdir)
        and record.state(run.name).get('state') == 'stale'):
    record.set(run.name, 'done', 'finished earlier', 0)


def _train(runs, directory, record, launcher, rerun_stale, group, echo):
  outcomes, jobs = {}, []
  for run in runs:
    workdir = os.path.join(directory, run.name)
    done = finished(workdir)
    queued = None if done else getattr(launcher, 'queued_job', lambda _: None)(
        record.state(run.name))
    changes = [] if queued else _changes(run, workdir)
    if queued:
      outcomes[run.name] = Outcome('pending', None, f'SLURM job {queued} still queued '
                                   f'or running; rerun the sweep when it ends')
      echo(f'[{run.name}] not resubmitted: {outcomes[run.name].message}')
    elif changes and rerun_stale:
      message = stale_message(workdir, changes)
      echo(f'[{run.name}] stale: {message}; moved to {move_aside(workdir)}, '
           f'training it again')
      jobs.append((run, workdir))
    elif changes:
      outcomes[run.name] = Outcome('stale', None, stale_message(workdir, changes))
      record.set(run.name, 'stale', outcomes[run.name].message)
      echo(f'[{run.name}] stale: {outcomes[run.name].message}')
    elif done and changes is not None:
      outcomes[run.name] = Outcome('skipped', 0, 'result.json exists')
      record.set(run.name, 'done', 'finished earlier', 0)
      echo(f'[{run.name}] skipped: finished earlier')
    else:
      jobs.append((run, workdir))
  progress = Progress([run.name for run, _ in jobs], directory,
                      parallel=getattr(launcher, 'parallel', len(jobs)), echo=echo)

  def on_start(run: Run, detail: str = '') -> None:
    resumed = os.path.isdir(rundir.SweepDir(directory).run(run.name).checkpoints)
    record.set(run.name, 'running', detail)
    progress.started(run.name, f'{"resuming" if resumed else "started"}'
                     + (f' ({detail})' if detail else ''), resumed)

  def on_end(run: Run, outcome: Outcome) -> None:
    seconds = progress.seconds(run.name)
    outcome.message = outcome.message or f'{seconds:.0f} s'
    outcomes[run.name] = outcome
    record.set(run.name, outcome.state, outcome.message, outcome.exit_code)
    progress.ended(run.name, outcome.state, outcome.message, seconds)

  try:
    if jobs:
      with progress:
        launcher.launch(jobs, group, on_start, on_end)
  except SweepInterrupted as e:
    for run, _ in jobs:
      if run.name not in outcomes:
        outcomes[run.name] = Outcome('pending', None, f'not started: stopped by {e}')
  return {run.name: outcomes[run.name] for run in runs if run.name in outcomes}


class Progress:
  """What a sweep prints as it goes. At the start: how many runs, where their
  logs are and the TensorBoard command. A line per run started and per run
  ended, the latter with k/N done, running, failed and the time left, from
  the finished runs' times (a run that resumed or failed does not count
  towards the estimate). A line when a row's first run compiles (the silent
  minute of a cold start). On a terminal, a bar of finished runs under those
  lines (tqdm, lines written above it) with each running run's step, read
  from its train.log."""

  _STEP = re.compile(r'\bstep (\d+)/(\d+)\b')
  _COMPILING = 'compiling the train step'

  def __init__(self, names: list[str], directory: str, *, parallel: int,
               echo: Callable[[str], None], terminal: bool | None = None):
    self.names, self.directory, self.parallel = names, directory, max(1, parallel)
    self.echo_line = echo
    self.terminal = (sys.stdout.isatty() and sys.stderr.isatty() if terminal is None
                     else terminal)
    self.begun, self.durations, self.states, self.resumed = {}, [], {}, set()
    self.status, self._offsets, self._compiled_rows = {}, {}, set()
    self._lock, self._reading, self._stop = threading.Lock(), threading.Lock(), threading.Event()
    self._thread = self.bar = self._redirect = None

  def __enter__(self):
    n = len(self.names)
    rows = len(dict.fromkeys(name.partition('/')[0] for name in self.names))
    self.echo(f'{n} run{"s" * (n != 1)} to train ({rows} row{"s" * (rows != 1)}), '
              f'{min(self.parallel, n)} at a time; logs in '
              f'{rundir.SweepDir(self.directory).run("ROW/seed_K").log}')
    self.echo(f'watch them: tensorboard --logdir {self.directory}')
    if self.terminal:
      from tqdm import tqdm
      from tqdm.contrib.logging import logging_redirect_tqdm
      self.bar = tqdm(total=n, unit='run', dynamic_ncols=True,
                      bar_format='{bar:20} {n_fmt}/{total_fmt} runs  {desc}')
      self._redirect = logging_redirect_tqdm()
      self._redirect.__enter__()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.bar is not None:
      self._redirect.__exit__(*exc)
      self.bar.close()
      self.bar = None

  def echo(self, line: str) -> None:
    if self.bar is not None:
      self.bar.write(line)
    else:
      self.echo_line(line)

  def started(self, name: str, what: str, resumed: bool = False) -> None:
    with self._lock:
      self.begun[name] = time.time()
      if resumed:
        self.resumed.add(name)
      self.status[name] = 'starting'
      self._offsets[name] = _size(self._log(name))   # a resumed run's old lines: not news
    self.echo(f'[{name}] {what}')

  def seconds(self, name: str) -> float:
    return time.time() - self.begun.get(name, time.time())

  def ended(self, name: str, state: str, message: str, seconds: float) -> None:
    self._read(name)                # the lines the watcher has not read yet
    with self._lock:
      self.states[name] = state
      self.status.pop(name, None)
      if state == 'done' and name not in self.resumed:
        self.durations.append(seconds)
      counts = self.counts()
    detail = message if state != 'done' else duration(seconds)
    self.echo(f'[{name}] {state}: {detail} · {counts}')
    if self.bar is not None:
      self.bar.update(1)
      self._refresh()

  def counts(self) -> str:
    """'3/10 done, 2 running, 1 failed, about 8m left'."""
    states = list(self.states.values())
    running = len(self.begun) - len(self.states)
    parts = [f'{states.count("done")}/{len(self.names)} done', f'{running} running']
    parts += [f'{states.count(s)} {s}' for s in ('pruned', 'failed', 'interrupted')
              if states.count(s)]
    left = self.seconds_left()
    if left is not None:
      parts.append(f'about {duration(left)} left')
    elif not self.durations:
      parts.append('time left: known once a run finishes')
    return ', '.join(parts)

  def seconds_left(self) -> float | None:
    """A finished run's time for each run not started, and what it has left
    for each running one, shared over the runs that train at once; a run's
    time is the mean of the latest few (a row's first seed compiles, the
    later ones reuse its programs). None before the first run finished or
    after the last."""
    queued = len(self.names) - len(self.begun)
    if not self.durations or queued + len(self.begun) - len(self.states) == 0:
      return None
    mean = statistics.fmean(self.durations[-max(self.parallel, 2):])
    running = [time.time() - t for n, t in self.begun.items() if n not in self.states]
    work = queued * mean + sum(max(mean - elapsed, 0.0) for elapsed in running)
    return work / min(self.parallel, max(queued + len(running), 1))

  def _log(self, name: str) -> str:
    return rundir.SweepDir(self.directory).run(name).log

  def _watch(self) -> None:
    while not self._stop.wait(1.0):
      with self._lock:
        running = [n for n in self.begun if n not in self.states]
      for name in running:
        self._read(name)
      if self.bar is not None:
        self._refresh()

  def _read(self, name: str) -> None:
    """New lines of a running run's train.log: its step, and whether it compiles."""
    with self._reading:             # the watcher's thread, or a run that ended
      self._read_new(name)

  def _read_new(self, name: str) -> None:
    try:
      with open(self._log(name), 'rb') as f:
        f.seek(self._offsets.get(name, 0))
        data = f.read()
    except OSError:
      return
    whole = data[:data.rfind(b'\n') + 1]        # a line still being written: next time
    self._offsets[name] = self._offsets.get(name, 0) + len(whole)
    for line in whole.decode(errors='replace').splitlines():
      row = name.partition('/')[0]
      if self._COMPILING in line and row not in self._compiled_rows:
        self._compiled_rows.add(row)
        self.status[name] = 'compiling'
        self.echo(f'[{name}] compiling the model (the first run of its row; a minute '
                  f'or more on a few CPU cores when JAX\'s compilation cache is cold)')
      elif (match := self._STEP.search(line)) is not None:
        self.status[name] = f'step {match[1]}/{match[2]}'

  def _refresh(self) -> None:
    with self._lock:
      running = [f'{n} {self.status.get(n, "")}'.strip() for n in self.begun
                 if n not in self.states]
      left = self.seconds_left()
    eta = '' if left is None else f'~{duration(left)} left · '
    self.bar.set_description_str(eta + ' · '.join(running), refresh=True)


def _size(path: str) -> int:
  try:
    return os.path.getsize(path)
  except OSError:
    return 0


def duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


def summary(outcomes: dict[str, Outcome]) -> str:
  width = max(map(len, outcomes), default=3)
  lines = [f'{name.ljust(width)}  {o.state:<11}  {o.message}'
           for name, o in outcomes.items()]
  counts = {}
  for o in outcomes.values():
    counts[o.state] = counts.get(o.state, 0) + 1
  lines.append(', '.join(f'{n} {state}' for state, n in counts.items()))
  return '\n'.join(lines)


def exit_code(outcomes: Iterable[Outcome]) -> ExitCode:
  """OK when every run finished (a pruned search trial too); FAILED if any
  failed; INTERRUPTED when the sweep was stopped (rerun it to resume); STALE
  when runs ran under another config than the sweep file's (`--rerun-stale`
  trains them again)."""
  states = {o.state for o in outcomes}
  if 'failed' in states:
    return ExitCode.FAILED
  if states & {'interrupted', 'pending'}:
    return ExitCode.INTERRUPTED
  return ExitCode.STALE if 'stale' in states else ExitCode.OK
