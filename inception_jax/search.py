"""Hyperparameter searches: `searches/NAME.py` defines `get_search(arg)`
returning a `Search`, and `run_search` trains its trials as an Optuna study.

A search names a base config (`CONFIG[:ARG]` and overrides), a space over
its keys (`LogUniform`, `Uniform`, `Int`, `Categorical`), an objective (a
metric the runs log at each evaluation, e.g. the EMA weights' final top-1
error) and its direction, a sampler (TPE, random, grid, CMA-ES) and a pruner
(Hyperband, successive halving, median, none) with its first rung in steps.

The driver asks the study for a trial's parameters, trains it as an ordinary
run directory DIR/trial_NNN (`train --search-trial DIR/study.journal#NNN`:
each evaluation reports the objective to the study and asks whether to stop;
a stopped trial saves and exits with `ExitCode.PRUNED`), and tells the study
how the trial ended: its final objective, pruned, or failed. Evaluations fall
on the pruner's rungs (`eval_every_steps` = the first rung). The study lives
in Optuna's journal file, DIR/study.journal: no database, no server, and the
same file serves trials on other SLURM nodes of a shared filesystem.

Rerunning the command continues the study: ended trials are kept, a trial
left running by a driver that died is trained again in its directory under
its number (resuming from its checkpoint), once; one stopped by the driver's
own Ctrl-C or SIGTERM is resumed whenever the command runs again. A trainer
dies with its driver (it gets SIGTERM, saves and exits). DIR/search.json
records the search as resolved; a rerun with another search file, or with
this one edited, is refused with the keys that changed. DIR/.search.lock
keeps a second driver out. `--confirm K` trains the base config and the best
trials again with seeds 0 … K-1, as a sweep in DIR/confirm, and prints its
table: the search's winner, tested against the noise of seeds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import pprint
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from inception_jax import config_lib, pruning, rundir, specs, sweep
from inception_jax.errors import ConfigError, ExitCode, UserError

STUDY_NAME = pruning.STUDY    # one study per search directory
# The metrics a run logs at each evaluation (train.py: EMA weights as
# `eval/`, raw weights as `eval_raw/`): what a trial can report to the study.
OBJECTIVES = tuple(f'{prefix}/{metric}' for prefix in ('eval', 'eval_raw')
                   for metric in ('top1_error', 'top5_error', 'loss'))
SAMPLERS = ('tpe', 'random', 'grid', 'cmaes')
PRUNERS = ('hyperband', 'successive_halving', 'median', 'none')
# Keys the driver sets itself: the budget the pruner's rungs are laid on,
# and the evaluations that fall on them.
DRIVER_KEYS = ('total_steps', 'num_epochs', 'eval_every_steps')
# A trial left running by a driver that died is trained again once; a second
# such death fails it (it may be what kills its drivers).
MAX_ATTEMPTS = 2


# --- The search file -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LogUniform:
  """A float drawn uniformly in log space: a learning rate, a weight decay."""
  low: float
  high: float

  def check(self, where: str) -> None:
    _check_range(self, where)
    if self.low <= 0:
      raise ConfigError(f'{where}: a log range needs low > 0, got LogUniform({self.low}, '
                        f'{self.high}); use Uniform for a range that includes 0')

  def distribution(self):
    return _optuna().distributions.FloatDistribution(self.low, self.high, log=True)

  def extremes(self) -> list:
    return [float(self.low), float(self.high)]


@dataclasses.dataclass(frozen=True)
class Uniform:
  """A float drawn uniformly: a label smoothing, a dropout rate."""
  low: float
  high: float

  def check(self, where: str) -> None:
    _check_range(self, where)

  def distribution(self):
    return _optuna().distributions.FloatDistribution(self.low, self.high)

  def extremes(self) -> list:
    return [float(self.low), float(self.high)]


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in [low, high], both included (uniform, or in log space)."""
  low: int
  high: int
  log: bool = False

  def check(self, where: str) -> None:
    if not all(type(x) is int for x in (self.low, self.high)):
      raise ConfigError(f'{where}: Int takes integers, got Int({self.low!r}, {self.high!r})')
    _check_range(self, where)
    if self.log and self.low <= 0:
      raise ConfigError(f'{where}: a log range needs low > 0, got Int({self.low}, '
                        f'{self.high}, log=True)')

  def distribution(self):
    return _optuna().distributions.IntDistribution(self.low, self.high, log=self.log)

  def extremes(self) -> list:
    return [self.low, self.high]

  def grid(self) -> list:
    return list(range(self.low, self.high + 1))


@dataclasses.dataclass(frozen=True)
class Categorical:
  """One of `choices` (numbers, strings, booleans): an optimizer's name."""
  choices: tuple

  def check(self, where: str) -> None:
    choices = self.choices
    if not isinstance(choices, (list, tuple)) or not choices:
      raise ConfigError(f'{where}: Categorical needs a non-empty list of choices, '
                        f'got {choices!r}')
    bad = [c for c in choices if not isinstance(c, (bool, int, float, str))]
    if bad:
      raise ConfigError(f'{where}: a choice must be a number, a string or a boolean, '
                        f'got {bad[0]!r}')
    if len(set(map(repr, choices))) < len(choices):
      raise ConfigError(f'{where}: duplicate choices in {list(choices)}')

  def distribution(self):
    return _optuna().distributions.CategoricalDistribution(tuple(self.choices))

  def extremes(self) -> list:
    return list(self.choices)

  def grid(self) -> list:
    return list(self.choices)


SPACE_TYPES = (LogUniform, Uniform, Int, Categorical)


def _check_range(d, where: str) -> None:
  name = type(d).__name__
  if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
             for x in (d.low, d.high)):
    raise ConfigError(f'{where}: {name} takes finite numbers, got {d.low!r} and {d.high!r}')
  if d.low > d.high:
    raise ConfigError(f'{where}: inverted range {name}({d.low}, {d.high}): low > high')
  if d.low == d.high:
    raise ConfigError(f'{where}: empty range {name}({d.low}, {d.high}): low == high; '
                      f'put a fixed value into the overrides')


@dataclasses.dataclass(frozen=True)
class Sampler:
  """How the study proposes parameters: 'tpe' (Bayesian, the first
  `startup_trials` drawn at random), 'random', 'grid' (every combination of
  Categorical and Int values, in an order `seed` shuffles) or 'cmaes'."""
  name: str = 'tpe'
  seed: int = 0
  startup_trials: int = 10


@dataclasses.dataclass(frozen=True)
class Pruner:
  """How the study stops weak trials: 'hyperband' or 'successive_halving'
  (rungs at min_steps × reduction_factor^k steps: at each, a trial goes on
  if it is in the best 1/reduction_factor of those that reached it),
  'median' (from min_steps, stop a trial worse than the median of the
  others at the same step) or 'none'. Trials evaluate every `min_steps`."""
  name: str = 'hyperband'
  min_steps: int = 100
  reduction_factor: int = 3


@dataclasses.dataclass(frozen=True)
class Search:
  """A search file's answer. `config`: a CONFIG[:ARG] string as `--config`
  takes; `overrides`: fixed dotted keys; `space`: dotted key → LogUniform,
  Uniform, Int or Categorical; `objective`: a metric in OBJECTIVES;
  `trials`: how many in all (`--trials` replaces it)."""
  config: str
  space: dict[str, Any]
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  objective: str = 'eval/top1_error'
  direction: str = 'minimize'
  sampler: Sampler = Sampler()
  pruner: Pruner = Pruner()
  trials: int = 16


def search_name(path_arg: str) -> str:
  """`searches/lr_smoothing.py:scale=tiny` → 'lr_smoothing'."""
  return sweep.sweep_name(path_arg)


def load_search(path_arg: str) -> Search:
  """The `Search` of `searches/NAME.py[:ARG]` (or a shipped search by
  NAME[:ARG]), checked: a bad space, objective, sampler or pruner is a
  one-line ConfigError naming the file."""
  path, _, arg = path_arg.partition(':')
  module = config_lib.load_module(path, kind='searches')
  if not hasattr(module, 'get_search'):
    raise ConfigError(f'{path} defines no get_search(arg)')
  search = module.get_search(arg or None)
  if not isinstance(search, Search):
    raise ConfigError(f'{path}: get_search() returned a {type(search).__name__}, '
                      f'not a search.Search')
  check(search, path)
  return search


def check(search: Search, where: str) -> None:
  """Everything about `search` that can be wrong before a trial trains."""
  if not isinstance(search.space, dict) or not search.space:
    raise ConfigError(f'{where}: the space is empty; give it a dotted config key '
                      f'→ LogUniform, Uniform, Int or Categorical')
  known = specs.known_keys()
  for key, d in search.space.items():
    if key not in known:
      raise ConfigError(f"{where}: unknown config key '{key}' in the space"
                        + _near(key, known))
    if key in DRIVER_KEYS:
      raise ConfigError(f"{where}: '{key}' cannot be searched: the search sets it "
                        f"(the pruner's budget and rungs)")
    if key in search.overrides:
      raise ConfigError(f"{where}: '{key}' is both in the space and in the overrides")
    if not isinstance(d, SPACE_TYPES):
      raise ConfigError(f"{where}: space '{key}' is a {type(d).__name__}, not "
                        f"LogUniform, Uniform, Int or Categorical")
    d.check(f"{where}: space '{key}'")
  if search.objective not in OBJECTIVES:
    raise ConfigError(f"{where}: objective '{search.objective}' is not a metric runs log "
                      f"at their evaluations; one of {', '.join(OBJECTIVES)}")
  if search.direction not in ('minimize', 'maximize'):
    raise ConfigError(f"{where}: direction must be 'minimize' or 'maximize', got "
                      f"{search.direction!r}")
  _check_sampler(search, where)
  _check_pruner(search.pruner, where)
  if type(search.trials) is not int or search.trials < 1:
    raise ConfigError(f'{where}: trials must be an integer >= 1, got {search.trials!r}')
  config = _base_config(search, where)
  steps = max_steps(config, None)
  if steps is None and search.pruner.name == 'hyperband':
    raise ConfigError(f"{where}: the Hyperband pruner needs a trial's length in steps: "
                      f"set total_steps in the overrides (the config counts epochs of a "
                      f"dataset whose size is known only once it is opened)")
  if search.pruner.name != 'none' and steps is not None and search.pruner.min_steps > steps:
    raise ConfigError(f"{where}: the pruner's min_steps ({search.pruner.min_steps}) "
                      f"exceeds the trials' {steps} steps")
  # Each end of each range (each choice) builds and checks as a config: a
  # float range over an integer key, a smoothing of 2, is one line now, not
  # a failed trial later.
  for key, d in search.space.items():
    for value in d.extremes():
      try:
        specs.RunSpec.from_config(config_lib.load(search.config,
                                                  {**search.overrides, key: value}))
      except UserError as e:
        raise ConfigError(f"{where}: space '{key}' = {value!r}: {e}") from None


def _near(key: str, known: list[str]) -> str:
  import difflib
  near = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
  return f"; did you mean '{near[0]}'?" if near else ''


def _check_sampler(search: Search, where: str) -> None:
  s = search.sampler
  if not isinstance(s, Sampler) or s.name not in SAMPLERS:
    raise ConfigError(f'{where}: sampler must be search.Sampler(name=...) with name one '
                      f'of {", ".join(SAMPLERS)}, got {s!r}')
  if type(s.seed) is not int or type(s.startup_trials) is not int or s.startup_trials < 0:
    raise ConfigError(f'{where}: the sampler\'s seed and startup_trials must be integers '
                      f'(startup_trials >= 0), got {s.seed!r} and {s.startup_trials!r}')
  if s.name == 'grid':
    ranges = [k for k, d in search.space.items() if not hasattr(d, 'grid')]
    if ranges:
      raise ConfigError(f"{where}: the grid sampler needs Categorical or Int entries; "
                        f"'{ranges[0]}' is a {type(search.space[ranges[0]]).__name__} range")


def _check_pruner(p: Pruner, where: str) -> None:
  if not isinstance(p, Pruner) or p.name not in PRUNERS:
    raise ConfigError(f'{where}: pruner must be search.Pruner(name=...) with name one '
                      f'of {", ".join(PRUNERS)}, got {p!r}')
  if type(p.min_steps) is not int or p.min_steps < 1:
    raise ConfigError(f"{where}: the pruner's min_steps must be an integer >= 1, "
                      f"got {p.min_steps!r}")
  if type(p.reduction_factor) is not int or p.reduction_factor < 2:
    raise ConfigError(f"{where}: the pruner's reduction_factor must be an integer >= 2, "
                      f"got {p.reduction_factor!r}")


def _base_config(search: Search, where: str):
  """The base config (overrides applied), checked as `train` checks it."""
  if not isinstance(search.config, str) or not isinstance(search.overrides, dict):
    raise ConfigError(f'{where}: config must be a CONFIG[:ARG] string and overrides a '
                      f'dict of dotted keys')
  try:
    config = config_lib.load(search.config, search.overrides)
    specs.RunSpec.from_config(config)
  except UserError as e:
    raise ConfigError(f'{where}: the base config: {e}') from None
  return config


def max_steps(config, unknown: Any = 'auto') -> Any:
  """The steps a trial trains to the end: `total_steps`, else the epochs of
  a synthetic dataset in steps; else `unknown` (a dataset's size is known
  only once it is opened)."""
  if config.total_steps:
    return int(config.total_steps)
  if config.data.name == 'synthetic':
    return math.ceil(config.num_epochs * config.data.num_train / config.batch_size)
  return unknown


def describe(search: Search, path_arg: str) -> dict:
  """What search.json records of the search and a rerun compares: JSON-ready."""
  space = {k: {'type': type(d).__name__, **dataclasses.asdict(d)}
           for k, d in search.space.items()}
  config = config_lib.load(search.config, search.overrides)
  steps = max_steps(config)
  pruner = dataclasses.asdict(search.pruner)
  return json.loads(json.dumps({
      'name': search_name(path_arg), 'config': search.config,
      'overrides': search.overrides, 'space': space, 'objective': search.objective,
      'direction': search.direction, 'sampler': dataclasses.asdict(search.sampler),
      'pruner': {**pruner, 'max_steps': steps}}, default=rundir.jsonable))


# What a rerun may change without starting another study.
_MAY_CHANGE = ('trials', 'search', 'path', 'arg', 'provenance', 'eval_every_steps')


def changes(recorded: dict, now: dict) -> list[str]:
  """'key: old -> new' for each recorded key of the search that `now` differs in."""
  old = rundir.flatten({k: v for k, v in recorded.items() if k not in _MAY_CHANGE})
  new = rundir.flatten({k: v for k, v in now.items() if k not in _MAY_CHANGE})
  return [f'{k}: {old.get(k, "(none)")} -> {new.get(k, "(none)")}'
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _check_record(directory: str, path_arg: str, described: dict) -> None:
  """Refuse a directory that holds another search's study, or this search's
  as its file was before an edit."""
  recorded = rundir.SearchDir(directory).read_record()
  if recorded is None:
    if os.path.exists(rundir.SearchDir(directory).journal):
      raise ConfigError(f'{directory} holds a study without its search.json; give '
                        f'another --workdir')
    return
  if recorded.get('name') != described['name']:
    raise ConfigError(f"{directory} holds the study of another search file "
                      f"({recorded.get('search')}), not {path_arg}; give another --workdir")
  changed = changes(recorded, described)
  if changed:
    shown = ', '.join(changed[:4]) + (f' and {len(changed) - 4} more' if len(changed) > 4
                                      else '')
    raise ConfigError(f'{path_arg} differs from the search that started the study in '
                      f'{directory}: {shown}; restore it, or give another --workdir for '
                      f'a new study')


# --- The study -----------------------------------------------------------------

def _optuna():
  """Optuna, or one line saying how to install it (an extra)."""
  optuna = pruning.load_optuna()
  optuna.logging.set_verbosity(optuna.logging.WARNING)   # the driver says what happens
  return optuna


def storage(directory: str):
  """The study's storage: Optuna's journal file DIR/study.journal."""
  _optuna()
  return pruning.storage(rundir.SearchDir(directory).journal)


def sampler_dict(search: Search, seed: int | None = None) -> dict:
  """What `pruning.make_sampler` builds a sampler from."""
  d = dataclasses.asdict(search.sampler)
  if seed is not None:
    d['seed'] = seed
  if search.sampler.name == 'grid':
    d['search_space'] = {k: v.grid() for k, v in search.space.items()}
  return d


class Study:
  """The study of a search directory (Optuna's, in DIR/study.journal) and
  what the driver does with it: ask, tell, a trial's user attributes."""

  def __init__(self, directory: str, search: Search, described: dict):
    optuna = _optuna()
    self.search, self.storage, self.state = search, storage(directory), optuna.trial.TrialState
    self.study = optuna.create_study(
        storage=self.storage, study_name=STUDY_NAME, direction=search.direction,
        sampler=pruning.make_sampler(sampler_dict(search)),
        pruner=pruning.make_pruner(described['pruner']), load_if_exists=True)
    self.id = self.storage.get_study_id_from_name(STUDY_NAME)
    # What a trainer reads: pruners are not stored with a study.
    attrs = {'objective': search.objective, 'direction': search.direction,
             'pruner': described['pruner'], 'sampler': described['sampler']}
    for key, value in attrs.items():
      if self.study.user_attrs.get(key) != value:
        self.study.set_user_attr(key, value)

  def trials(self, *states) -> list:
    return self.study.get_trials(deepcopy=False, states=states or None)

  def trial(self, number: int):
    return self.storage.get_trial(self._id(number))

  def _id(self, number: int) -> int:
    return self.storage.get_trial_id_from_study_id_trial_number(self.id, number)

  def set(self, number: int, **attrs) -> None:
    for key, value in attrs.items():
      self.storage.set_trial_user_attr(self._id(number), key, value)

  def ask(self) -> tuple[int, dict]:
    """A new trial: its number and parameters. Its sampler is seeded with the
    sampler's seed + its number, so the same study history gives the same
    parameters, whether or not the driver was restarted in between."""
    number = len(self.trials())          # the storage numbers a study's trials 0, 1, …
    self.study.sampler = pruning.make_sampler(
        sampler_dict(self.search, self.search.sampler.seed + number))
    trial = self.study.ask({k: d.distribution() for k, d in self.search.space.items()})
    return trial.number, dict(trial.params)

  def tell(self, number: int, value: float | None = None, state=None):
    try:
      self.study.tell(number, value, state=state)
    except RuntimeError:
      # Optuna's grid sampler calls study.stop() once its grid is done, which
      # only works inside study.optimize(); the trial's state is stored first.
      if self.search.sampler.name != 'grid':
        raise
    return self.trial(number)


def ended_trials(trials: list) -> list:
  """The trials that count towards a search's total: complete, pruned or failed."""
  from optuna.trial import TrialState
  return [t for t in trials
          if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]


# --- Launchers -----------------------------------------------------------------

@dataclasses.dataclass
class TrialJob:
  """One training of a trial: its run (name trial_NNN, config, overrides with
  the trial's parameters) and its `train` arguments."""
  number: int
  params: dict[str, Any]
  run: sweep.Run
  workdir: str               # absolute
  args: list[str]


@dataclasses.dataclass
class Ended:
  """How a trial's process or job ended: its exit status (None: a job an
  earlier driver submitted, seen leaving the queue) and its error line."""
  exit_code: int | None
  message: str = ''


# Linux's prctl option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def _dies_with(parent: int) -> Callable[[], None] | None:
  """A `preexec_fn` that has the trainer get SIGTERM when its driver dies,
  however it dies (SIGKILL included): the trainer saves and exits as if
  stopped, and the rerun resumes it. Linux only (elsewhere None)."""
  if not sys.platform.startswith('linux'):
    return None

  def set_death_signal() -> None:
    try:
      ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
      return
    if os.getppid() != parent:     # the driver died before prctl took effect
      os.kill(os.getpid(), signal.SIGTERM)
  return set_death_signal


def _wait_for_trainer(workdir: str, echo: Callable[[str], None],
                      timeout: float = 300.0) -> None:
  """Wait (up to `timeout`) while a trainer still holds the trial's run lock:
  one that an earlier driver's death stopped may still be saving."""
  if not os.path.isdir(workdir):
    return
  begin, told = time.time(), False
  while time.time() - begin < timeout:
    try:
      rundir.lock(rundir.RunDir(workdir).lock_file).close()
      return
    except rundir.LockHeld as e:
      if not told:
        echo(f'[{os.path.basename(workdir)}] waiting: {e}')
        told = True
      time.sleep(1.0)


class LocalTrials:
  """Each trial a `python -m inception_jax train` subprocess on this machine,
  `parallel` at a time, its output in DIR/trial_NNN/train.log. SIGINT and
  SIGTERM reach the trainers as one SIGTERM each (they save and stop); a
  trainer gets SIGTERM too when the driver dies (`_dies_with`)."""

  poll_seconds = 0.2
  waits_on_stop = True      # a stopped driver waits for its trainers to save

  def __init__(self, parallel: int = 1):
    if parallel < 1:
      raise UserError(f'--parallel must be >= 1, got {parallel}')
    self.parallel = parallel

  def command(self, job: TrialJob) -> list[str]:
    return [sys.executable, '-m', 'inception_jax', 'train', *job.args]

  def start(self, job: TrialJob, group: str, echo: Callable[[str], None]):
    del group
    _wait_for_trainer(job.workdir, echo)
    os.makedirs(job.workdir, exist_ok=True)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, (sweep.PACKAGE_PARENT,
                                                      env.get('PYTHONPATH'))))
    # Own session, as a sweep's runs: a Ctrl-C on the terminal reaches the
    # driver only, which passes one SIGTERM on.
    with open(rundir.RunDir(job.workdir).log, 'a') as log:
      return subprocess.Popen(self.command(job), env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True, preexec_fn=_dies_with(os.getpid()))

  @staticmethod
  def detail(handle) -> dict:
    return {}

  @staticmethod
  def ended(handle, workdir: str) -> Ended | None:
    if handle.poll() is None:
      return None
    return Ended(handle.returncode, sweep.last_error(rundir.RunDir(workdir).log))

  @staticmethod
  def stop(handles: list) -> None:
    for handle in handles:
      if handle.poll() is None:
        handle.send_signal(signal.SIGTERM)

  @staticmethod
  def adopt(attrs: dict):
    """A trial's process an earlier driver started: never still ours."""
    return None


@dataclasses.dataclass
class _Queued:
  """A SLURM job an earlier driver submitted, still queued or running."""
  job_id: str


class SlurmTrials:
  """Each trial a SLURM job through submitit (resources from its
  `config.slurm`), `parallel` in the queue at a time; their logs in
  DIR/slurm/. A stopped or killed driver leaves them running: the rerun
  waits for them (user attribute `slurm_job`) instead of submitting again."""

  waits_on_stop = False

  def __init__(self, directory: str, train_job: Callable[[list[str]], dict], *,
               parallel: int = 1, poll_seconds: float = 5.0):
    if parallel < 1:
      raise UserError(f'--parallel must be >= 1, got {parallel}')
    self.folder = os.path.join(rundir.SearchDir(os.path.abspath(directory)).slurm_logs,
                               '%j')
    self.train_job, self.parallel, self.poll_seconds = train_job, parallel, poll_seconds

  def start(self, job: TrialJob, group: str, echo: Callable[[str], None]):
    import submitit
    del echo
    try:
      slurm = specs.RunSpec.from_config(job.run.build_config()).slurm
    except UserError:
      slurm = sweep.CLUSTER_DEFAULTS       # the job itself reports the bad config
    os.makedirs(job.workdir, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=self.folder)
    executor.update_parameters(job_name=group, **sweep.executor_parameters(slurm))
    return executor.submit(self.train_job, job.args)

  @staticmethod
  def detail(handle) -> dict:
    return {'slurm_job': str(handle.job_id)}

  @staticmethod
  def ended(handle, workdir: str) -> Ended | None:
    if isinstance(handle, _Queued):
      return None if sweep.in_queue(handle.job_id) is not False else Ended(
          None, f'SLURM job {handle.job_id} ended without its driver')
    if not (handle.done() or sweep.vanished(handle)):
      return None
    outcome = sweep.job_outcome(handle, workdir)
    return Ended(outcome.exit_code, outcome.message)

  @staticmethod
  def stop(handles: list) -> None:
    """The jobs go on; a rerun of the search waits for them."""

  @staticmethod
  def adopt(attrs: dict):
    job_id = attrs.get('slurm_job')
    # Unknown (squeue failed): assume it is still there rather than start a second.
    return _Queued(job_id) if job_id and sweep.in_queue(job_id) is not False else None


# --- The driver ----------------------------------------------------------------

def lock_directory(directory: str):
  """Create the search directory and hold DIR/.search.lock while inside: a
  second driver on the same directory stops at once, naming the first's pid."""
  return sweep.lock_directory(directory, rundir.SearchDir, 'search')


def judge(workdir: str, exit_code: int | None, objective: str,
          stopping: bool = False) -> tuple[str, float | None, str]:
  """How a trial's training ended, from its exit status and its run
  directory: ('complete', value, ''), ('pruned', None, ''), ('interrupted',
  None, ''): it saved and can resume, or ('failed', None, why) ('' when its
  exit status says it)."""
  try:
    result = rundir.RunDir(workdir).read_result()
  except UserError as e:
    return 'failed', None, str(e)
  if exit_code == ExitCode.PRUNED or (result or {}).get('state') == 'pruned':
    return 'pruned', None, ''
  if result is not None and exit_code in (ExitCode.OK, None):
    value = result.get('metrics', {}).get(objective)
    if isinstance(value, (int, float)) and math.isfinite(value):
      return 'complete', float(value), ''
    return 'failed', None, f'its result.json holds no finite {objective} ({value!r})'
  if (exit_code is None or exit_code == ExitCode.INTERRUPTED
      or (stopping and exit_code in sweep.KILLED_BY_STOP)):
    return 'interrupted', None, ''
  return 'failed', None, ''


def steps_trained(workdir: str) -> int:
  """The step a trial's run reached: a pruned run's, a finished run's, else
  the last one its metrics.jsonl logged."""
  try:
    result = rundir.RunDir(workdir).read_result() or {}
  except UserError:
    result = {}
  if 'pruned_at_step' in result:
    return int(result['pruned_at_step'])
  if 'steps' in result:
    return int(result['steps'])
  rows = rundir.RunDir(workdir).read_metrics()
  return int(rows[-1]['step']) if rows else 0


def _short(value: Any) -> str:
  return f'{value:.4g}' if isinstance(value, float) else str(value)


def params_text(params: dict) -> str:
  """'optim.learning_rate=0.0213, loss.label_smoothing=0.0412'."""
  return ', '.join(f'{k}={_short(v)}' for k, v in params.items())


class Driver:
  """The ask-and-tell loop of one invocation: trials left running by an
  earlier driver first, then new ones, `launcher.parallel` at a time, until
  the ended (complete, pruned, failed) trials reach `trials`."""

  def __init__(self, directory: str, search: Search, study: Study, launcher, *,
               trials: int, group: str, echo: Callable[[str], None]):
    self.directory, self.search, self.study = directory, search, study
    self.launcher, self.trials, self.group, self.echo = launcher, trials, group, echo
    self.journal = os.path.abspath(rundir.SearchDir(directory).journal)
    base = rundir.flatten(config_lib.load(search.config, search.overrides).to_dict())
    self.tracking_keys = {k for k in base if k.startswith('tracking.')}
    self.stopped: str | None = None     # the signal that stopped the driver

  # What a trial trains.

  def job(self, number: int, params: dict) -> TrialJob:
    name = rundir.trial_name(number)
    overrides = {**self.search.overrides, **params}
    if self.search.pruner.name != 'none':
      overrides['eval_every_steps'] = self.search.pruner.min_steps   # on the rungs
    # wandb's run name and the trainer's log lines: the trial and its draw
    # (TensorBoard names the run by its directory, trial_NNN).
    drawn = ' '.join(f'{k.rsplit(".", 1)[-1]}={_short(v)}' for k, v in params.items())
    labels = {'tracking.run_name': f'{name} {drawn}'.strip(), 'tracking.job_type': 'trial',
              'tracking.tags': [sweep.tag(k, _short(v)) for k, v in params.items()],
              'tracking.hparams_first': list(self.search.space)}
    overrides.update({k: v for k, v in labels.items() if k in self.tracking_keys})
    run = sweep.Run(name=name, config=self.search.config, overrides=overrides)
    workdir = os.path.abspath(rundir.SearchDir(self.directory).trial(number).path)
    args = run.train_args(workdir, self.group) + [
        '--search-trial', f'{self.journal}#{number}']
    return TrialJob(number, dict(params), run, workdir, args)

  # The loop.

  def run(self) -> None:
    queue, running, stopping = self.leftovers(), {}, []

    def stop(signum, frame):
      stopping.append(signum)
      self.launcher.stop([handle for handle, _, _ in running.values()])
    previous = ({s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
                if threading.current_thread() is threading.main_thread() else {})
    try:
      while True:
        while not stopping and len(running) < self.launcher.parallel:
          if queue:
            job, handle = queue.pop(0)
          elif len(ended_trials(self.study.trials())) + len(running) < self.trials:
            job, handle = self.job(*self.study.ask()), None
          else:
            break
          running[job.number] = (handle or self.start(job), job, time.time())
        if not running or (stopping and not self.launcher.waits_on_stop):
          break
        for number, (handle, job, begun) in list(running.items()):
          ended = self.launcher.ended(handle, job.workdir)
          if ended is not None:
            del running[number]
            retry = self.end(job, ended, time.time() - begun, bool(stopping))
            if retry:
              queue.insert(0, (job, None))
        time.sleep(getattr(self.launcher, 'poll_seconds', 0.2))
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
    if stopping:
      self.stopped = signal.Signals(stopping[0]).name

  def leftovers(self) -> list[tuple[TrialJob, Any]]:
    """The trials an earlier driver left running: a job still in the queue
    is waited for; one whose run finished is told; the others train again
    in their directory (resuming), once, unless a stop of the driver itself
    ended them (that is no attempt)."""
    queue = []
    for t in self.study.trials(self.study.state.RUNNING):
      job = self.job(t.number, t.params)
      handle = self.launcher.adopt(t.user_attrs)
      kind, _, _ = judge(job.workdir, None, self.search.objective)
      if handle is not None:
        self.echo(f'[{rundir.trial_name(t.number)}] still in the SLURM queue '
                  f'(job {handle.job_id}): waiting for it')
        queue.append((job, handle))
      elif kind != 'interrupted':             # it ended while no driver watched
        self.end(job, Ended(None), 0.0, False)
      elif t.user_attrs.get('attempts', 0) >= MAX_ATTEMPTS:
        self.tell_failed(t.number, f'left running by {MAX_ATTEMPTS} drivers that died')
      else:
        queue.append((job, None))
    return queue

  def start(self, job: TrialJob):
    attrs = self.study.trial(job.number).user_attrs
    resumed = rundir.RunDir(job.workdir).has_checkpoint()
    self.study.set(job.number, workdir=rundir.trial_name(job.number),
                   attempts=attrs.get('attempts', 0) + 1)
    handle = self.launcher.start(job, self.group, self.echo)
    detail = self.launcher.detail(handle)
    if detail:
      self.study.set(job.number, **detail)
    where = f' (SLURM job {detail["slurm_job"]})' if 'slurm_job' in detail else ''
    self.echo(f'[{rundir.trial_name(job.number)}] {"resuming" if resumed else "started"}'
              f'{where}: {params_text(job.params)}')
    return handle

  def end(self, job: TrialJob, ended: Ended, seconds: float, stopping: bool) -> bool:
    """Tell the study how the trial ended; True to train it again now."""
    number, name = job.number, rundir.trial_name(job.number)
    attrs = self.study.trial(number).user_attrs
    steps = steps_trained(job.workdir)
    self.study.set(number, steps=steps,
                   wall_seconds=attrs.get('wall_seconds', 0.0) + seconds)
    kind, value, why = judge(job.workdir, ended.exit_code, self.search.objective, stopping)
    took = f'{sweep.duration(seconds)}, ' if seconds else ''
    if kind == 'complete':
      self.study.tell(number, value)
      self.echo(f'[{name}] complete: {self.search.objective} {value:.4g} ({took}'
                f'{steps} steps) · {self.progress()}')
    elif kind == 'pruned':
      trial = self.study.tell(number, state=self.study.state.PRUNED)
      last = '' if trial.value is None else f': {self.search.objective} {trial.value:.4g}'
      took = f' ({sweep.duration(seconds)})' if seconds else ''
      self.echo(f'[{name}] pruned at step {steps}{last}{took} · {self.progress()}')
    elif kind == 'interrupted' and stopping:
      # Stopped with the driver: no attempt spent; the next run resumes it.
      self.study.set(number, attempts=max(attrs.get('attempts', 1) - 1, 0))
      self.echo(f'[{name}] interrupted at step {steps}: it resumes when the search '
                f'runs again')
    elif kind == 'interrupted' and attrs.get('attempts', 1) < MAX_ATTEMPTS:
      self.echo(f'[{name}] interrupted at step {steps} ({ended.message or "no result"}): '
                f'training it again')
      return True
    else:
      self.tell_failed(number, why or ended.message or f'exit status {ended.exit_code}')
    return False

  def tell_failed(self, number: int, message: str) -> None:
    self.study.set(number, error=message[:500])
    self.study.tell(number, state=self.study.state.FAIL)
    self.echo(f'[{rundir.trial_name(number)}] failed: {message} · {self.progress()}')

  def progress(self) -> str:
    """'5/16 ended (3 complete, 2 pruned), best trial_002 4.2'."""
    trials = self.study.trials()
    ended = ended_trials(trials)
    counts = _counts(ended)
    text = (f'{len(ended)}/{self.trials} ended ('
            + ', '.join(f'{counts[s]} {s}' for s in ('complete', 'pruned', 'failed')
                        if counts.get(s)) + ')')
    best = best_trials(trials, self.search.direction, 1)
    return text + (f', best {rundir.trial_name(best[0].number)} {best[0].value:.4g}'
                   if best else '')


def _counts(trials: list) -> dict[str, int]:
  """{'complete': 3, 'pruned': 2, 'failed': 1, 'running': 1}: trials by state."""
  counts = {}
  for t in trials:
    state = {'FAIL': 'failed'}.get(t.state.name, t.state.name.lower())
    counts[state] = counts.get(state, 0) + 1
  return counts


def best_trials(trials: list, direction: str, top: int) -> list:
  """The `top` complete trials with the best values, best first."""
  from optuna.trial import TrialState
  complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
  return sorted(complete, key=lambda t: t.value, reverse=direction == 'maximize')[:top]


def budget(trials: list, steps: Any) -> tuple[int, int]:
  """(steps trained, steps had every trial trained to the end) over the
  complete and pruned trials; `steps` is a trial's full length (the longest
  complete trial's when not an integer)."""
  from optuna.trial import TrialState
  ended = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
  if not isinstance(steps, int):
    steps = max((t.user_attrs.get('steps', 0) for t in ended
                 if t.state == TrialState.COMPLETE), default=0)
  return sum(t.user_attrs.get('steps', 0) for t in ended), len(ended) * steps


@dataclasses.dataclass
class Summary:
  """What a `search` invocation did: the study's trials as they stand, the
  signal that stopped the driver (None: it ran to the end)."""
  name: str
  objective: str
  direction: str
  trials: int
  max_steps: Any
  study_trials: list
  stopped: str | None = None

  def counts(self) -> dict[str, int]:
    return _counts(self.study_trials)

  def lines(self) -> list[str]:
    counts = self.counts()
    ended = sum(counts.get(s, 0) for s in ('complete', 'pruned', 'failed'))
    lines = [f'search {self.name}: {ended}/{self.trials} trials ended ('
             + ', '.join(f'{counts.get(s, 0)} {s}' for s in ('complete', 'pruned', 'failed'))
             + (f', {counts["running"]} to resume' if counts.get('running') else '') + ')']
    best = best_trials(self.study_trials, self.direction, 1)
    if best:
      lines.append(f'best: {rundir.trial_name(best[0].number)}  {self.objective} '
                   f'{best[0].value:.4g}  {params_text(best[0].params)}')
    used, full = budget(self.study_trials, self.max_steps)
    if full:
      lines.append(f'steps trained: {used:,} of the {full:,} that training every trial '
                   f'to the end takes: pruning saved {100 * (1 - used / full):.1f}%')
    return lines

  def exit_code(self) -> ExitCode:
    """INTERRUPTED when stopped (rerun to continue), FAILED when no trial
    completed, else OK (a failed trial is one outcome of a search)."""
    if self.stopped or self.counts().get('running'):
      return ExitCode.INTERRUPTED
    return ExitCode.OK if self.counts().get('complete') else ExitCode.FAILED


def trial_count(search: Search, trials: int | None) -> int:
  """`--trials`, else the search file's; a grid has at most its size."""
  n = search.trials if trials is None else trials
  if type(n) is not int or n < 1:
    raise UserError(f'--trials must be >= 1, got {n}')
  if search.sampler.name == 'grid':
    n = min(n, math.prod(len(d.grid()) for d in search.space.values()))
  return n


def record(search: Search, path_arg: str, described: dict, trials: int,
           command: str | None) -> dict:
  """search.json: the search file and arg, the resolved search, the trial
  count and the latest invocation's provenance."""
  path, _, arg = path_arg.partition(':')
  file = config_lib.absolute(path, kind='searches')
  return {'search': path_arg, 'path': file, 'arg': arg, **described, 'trials': trials,
          'eval_every_steps': (search.pruner.min_steps if search.pruner.name != 'none'
                               else None),
          'provenance': sweep.provenance(command)}


def run_search(path_arg: str, directory: str, *, launcher, trials: int | None = None,
               echo: Callable[[str], None] = print, command: str | None = None) -> Summary:
  """Run (or continue) the search of `path_arg` in `directory` until its
  trials have ended or a signal stops it, holding DIR/.search.lock."""
  search = load_search(path_arg)
  n = trial_count(search, trials)
  described = describe(search, path_arg)
  with lock_directory(directory):
    _check_record(directory, path_arg, described)
    rundir.SearchDir(directory).write_record(record(search, path_arg, described, n, command))
    study = Study(directory, search, described)
    driver = Driver(directory, search, study, launcher, trials=n,
                    group=search_name(path_arg), echo=echo)
    before = len(ended_trials(study.trials()))
    echo(f'search {search_name(path_arg)}: {n} trials ({before} ended before), '
         f'{launcher.parallel} at a time; {_what(search, described)}')
    echo(f'trials in {os.path.join(directory, "trial_NNN")} (train.log each); watch them: '
         f'tensorboard --logdir {directory}')
    driver.run()
    return Summary(search_name(path_arg), search.objective, search.direction, n,
                   described['pruner']['max_steps'], study.trials(), driver.stopped)


def _what(search: Search, described: dict) -> str:
  """'minimize eval/top1_error; TPE (seed 0), Hyperband: rungs at 100, 300, 900 of 1000 steps'."""
  s, p = search.sampler, search.pruner
  sampler = {'tpe': 'TPE', 'random': 'random', 'grid': 'grid', 'cmaes': 'CMA-ES'}[s.name]
  text = f'{search.direction} {search.objective}; {sampler} sampler (seed {s.seed})'
  steps = described['pruner']['max_steps']
  if p.name in ('hyperband', 'successive_halving'):
    name = 'Hyperband' if p.name == 'hyperband' else 'successive halving'
    if not isinstance(steps, int):
      return text + f', {name} pruner from step {p.min_steps}'
    rungs = [r for r in pruning.rungs(described['pruner'], steps) if r < steps]
    return text + (f', {name} pruner: rungs at steps {", ".join(map(str, rungs))} of '
                   f'{steps}')
  if p.name == 'median':
    return text + f', median pruner from step {p.min_steps}'
  return text + ', no pruning'


# --- Dry run, confirmation -------------------------------------------------------

def dry_run(path_arg: str, directory: str, trials: int | None = None) -> list[str]:
  """What `search` would do: the search as resolved, the study's trials so
  far; nothing written (a changed search file is refused as the run would)."""
  search = load_search(path_arg)
  n = trial_count(search, trials)
  described = describe(search, path_arg)
  _check_record(directory, path_arg, described)
  lines = [f'search {search_name(path_arg)}: {n} trials of {search.config}',
           f'  {_what(search, described)}']
  lines += [f'  overrides: {params_text(search.overrides)}'] if search.overrides else []
  lines += [f'  {k}: {type(d).__name__}({", ".join(_short(x) for x in d.extremes())}'
            f'{", log" if getattr(d, "log", False) else ""})' for k, d in search.space.items()]
  if os.path.exists(rundir.SearchDir(directory).journal):
    optuna = _optuna()
    trials_so_far = optuna.load_study(study_name=STUDY_NAME,
                                      storage=storage(directory)).get_trials(deepcopy=False)
    lines.append(f'  study in {directory}: ' + (', '.join(
        f'{v} {k}' for k, v in _counts(trials_so_far).items()) or 'no trials yet'))
  lines.append(f'\ndry run: nothing written; without --dry-run this trains up to {n} '
               f'trials in {os.path.join(directory, "trial_NNN")}')
  return lines


def confirm(directory: str, seeds: int, top: int, *, launcher,
            echo: Callable[[str], None] = print,
            command: str | None = None) -> dict[str, sweep.Outcome]:
  """Train the base config and the `top` best trials' configs with seeds
  0 … seeds-1, as a sweep in DIR/confirm: rows 'base' and 'trial_NNN'. The
  sweep file, DIR/confirm.py, is written first (rerun it with `sweep`)."""
  if seeds < 1 or top < 1:
    raise UserError(f'--confirm takes a number of seeds >= 1 and --top a number of '
                    f'trials >= 1, got {seeds} and {top}')
  where = rundir.SearchDir(directory)
  recorded = where.read_record()
  if recorded is None or not os.path.exists(where.journal):
    raise UserError(f'{directory} holds no search to confirm')
  optuna = _optuna()
  trials = optuna.load_study(study_name=STUDY_NAME,
                             storage=storage(directory)).get_trials(deepcopy=False)
  best = best_trials(trials, recorded['direction'], top)
  if not best:
    raise UserError(f'no trial of the search in {directory} completed: nothing to confirm')
  config = config_lib.absolute(recorded['config'])
  overrides = recorded.get('overrides', {})
  runs = [dict(name='base', config=config, overrides=overrides, seeds=list(range(seeds)))]
  runs += [dict(name=rundir.trial_name(t.number), config=config,
                overrides={**overrides, **t.params}, seeds=list(range(seeds))) for t in best]
  path = where.confirm + '.py'
  rundir.write_text(path, _CONFIRM_FILE.format(
      search=recorded['search'], directory=directory, runs=pprint.pformat(runs)))
  echo(f'confirming the best {len(best)} trial(s) against the base config with '
       f'{seeds} seed(s) each: sweep {path} in {where.confirm}')
  return sweep.run_sweep(path, where.confirm, launcher=launcher, echo=echo, command=command)


_CONFIRM_FILE = '''"""The confirmation of the search {search} in {directory}, written by
`search --confirm`: the base config and the best trials, each over seeds.
  python -m inception_jax sweep {directory}/confirm.py --workdir {directory}/confirm
"""

RUNS = {runs}


def get_sweep(arg=None):
  return RUNS
'''
