"""A search's Optuna side that the trainer needs too: the study's pruner and
sampler from their descriptions, and the trainer's end of one trial.

A search directory holds one Optuna study, `search`, in a journal file
(`optuna.storages.JournalStorage` over a `JournalFileBackend`: no database,
no server; several processes, on one machine or on SLURM nodes sharing the
filesystem, append to it under its lock). The search driver creates the study
and each trial (`study.ask()`), then starts `train --search-trial
JOURNAL#NUMBER`; that process attaches to its trial (`TrialReporter`), reports
each evaluation's objective (`trial.report(value, step)`) and asks the pruner
whether to go on (`trial.should_prune()`). The pruner judges a trial by the
steps it has reached (Li et al. 2018, Hyperband; Jamieson & Talwalkar 2016,
successive halving): its rungs fall on the steps `min_steps · reduction_factor^k`,
so a trial evaluated every `min_steps` steps meets each rung.

Optuna stores no pruner and no sampler: each process rebuilds them from the
study's user attributes (`pruner`: {name, min_steps, max_steps,
reduction_factor}; `objective`, `direction`), which the driver sets when it
creates the study. Optuna is an extra (`pip install inception_jax[search]`),
imported only when a function here needs it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from inception_jax import compat
from inception_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)

STUDY = 'search'                     # the one study of a search directory
DEFAULT_OBJECTIVE = 'eval/top1_error'
PRUNERS = ('hyperband', 'successive_halving', 'median', 'none')
SAMPLERS = ('tpe', 'random', 'grid', 'cmaes')
PRUNER_KEYS = ('name', 'min_steps', 'max_steps', 'reduction_factor', 'startup_trials')
SAMPLER_KEYS = ('name', 'seed', 'startup_trials', 'search_space')
# A trial's user attribute: the step at which its pruner stopped it, set
# before the trainer acts on the decision, so that a trainer killed between
# the decision and its result.json stops there again when it is relaunched.
PRUNED_AT = 'pruned_at_step'


def load_optuna():
  """The optuna module, or one line saying how to install it."""
  try:
    import optuna as module
  except ImportError:
    raise UserError('hyperparameter search needs Optuna: pip install '
                    '"inception_jax[search]" (or optuna)') from None
  return module


def storage(journal: str):
  """The study storage of a search directory: Optuna's journal in the file
  `journal` (created when missing)."""
  storages = load_optuna().storages
  return storages.JournalStorage(storages.journal.JournalFileBackend(journal))


# --- Pruner and sampler ----------------------------------------------------------

def make_pruner(d: Mapping[str, Any]):
  """The Optuna pruner a description names: `name` (one of PRUNERS),
  `min_steps` (the first rung, in training steps), `reduction_factor` (the
  rungs' ratio, and the 1 in `reduction_factor` trials a rung promotes;
  default 3), `max_steps` (the base config's total steps: Hyperband's
  brackets; 'auto' where the dataset's size is not known beforehand: the
  longest finished trial's, as Optuna counts it) and, for 'median',
  `startup_trials` (trials finished before it prunes; Optuna's default 5).
  Hyperband runs successive halving in brackets that
  start at min_steps · reduction_factor^s; 'median' stops a trial whose best
  value so far is worse than the median of the finished trials' at the same
  step, from min_steps on; 'none' never stops one."""
  d = _described(d, PRUNER_KEYS, 'pruner')
  name = d.get('name', 'hyperband')
  pruners = load_optuna().pruners
  if name not in PRUNERS:
    raise ConfigError(f'pruner {name!r} is not one of {", ".join(PRUNERS)}')
  if name == 'none':
    return pruners.NopPruner()
  min_steps = _integer(d, 'min_steps', name, least=1)
  factor = _integer(d, 'reduction_factor', name, least=2, default=3)
  if name == 'successive_halving':
    return pruners.SuccessiveHalvingPruner(min_resource=min_steps,
                                           reduction_factor=factor)
  if name == 'hyperband':
    # 'auto': the dataset's size is known only once a run opens it.
    max_steps = d.get('max_steps')
    if max_steps != 'auto':
      max_steps = _integer(d, 'max_steps', name, least=min_steps)
    return pruners.HyperbandPruner(min_resource=min_steps, max_resource=max_steps,
                                   reduction_factor=factor)
  return pruners.MedianPruner(
      n_startup_trials=_integer(d, 'startup_trials', name, least=0, default=5),
      n_warmup_steps=min_steps)


def rungs(d: Mapping[str, Any], max_steps: int) -> list[int]:
  """The steps up to `max_steps` at which the described pruner may stop a
  trial: min_steps · reduction_factor^k for Hyperband and successive halving,
  every multiple of min_steps for 'median', none for 'none'. A trial
  evaluated every min_steps steps reaches each of them."""
  d = _described(d, PRUNER_KEYS, 'pruner')
  name = d.get('name', 'hyperband')
  make_pruner({**d, 'max_steps': d.get('max_steps', max_steps)})    # checks it
  if name == 'none':
    return []
  first = d['min_steps']
  if name == 'median':
    return list(range(first, max_steps + 1, first))
  steps, factor = [first], d.get('reduction_factor', 3)
  while steps[-1] * factor <= max_steps:
    steps.append(steps[-1] * factor)
  return [step for step in steps if step <= max_steps]


def make_sampler(d: Mapping[str, Any]):
  """The Optuna sampler a description names: `name` (one of SAMPLERS), `seed`
  (the same seed, the same sequence of suggestions when trials run one at a
  time), `startup_trials` (random trials before TPE or CMA-ES model the space;
  Optuna's default when absent) and, for 'grid', `search_space` (each
  parameter's list of values)."""
  d = _described(d, SAMPLER_KEYS, 'sampler')
  name = d.get('name', 'tpe')
  samplers = load_optuna().samplers
  if name not in SAMPLERS:
    raise ConfigError(f'sampler {name!r} is not one of {", ".join(SAMPLERS)}')
  seed = d.get('seed', 0)
  if not isinstance(seed, int) or isinstance(seed, bool):
    raise ConfigError(f'sampler {name}: seed must be an integer, got {seed!r}')
  startup = ({} if d.get('startup_trials') is None else
             {'n_startup_trials': _integer(d, 'startup_trials', name, least=0)})
  if name == 'tpe':
    return samplers.TPESampler(seed=seed, **startup)
  if name == 'cmaes':
    return samplers.CmaEsSampler(seed=seed, **startup)
  if name == 'random':
    return samplers.RandomSampler(seed=seed)
  space = d.get('search_space')
  if not space or not all(isinstance(v, (list, tuple)) and v for v in space.values()):
    raise ConfigError('sampler grid needs search_space: each parameter\'s list of values')
  return samplers.GridSampler({k: list(v) for k, v in space.items()}, seed=seed)


def _described(d: Mapping[str, Any], keys: tuple[str, ...], what: str) -> dict:
  if not isinstance(d, Mapping):
    raise ConfigError(f'a {what} is described by a dict, got {d!r}')
  unknown = sorted(set(d) - set(keys))
  if unknown:
    raise ConfigError(f'{what} {d.get("name")!r}: unknown key(s) {", ".join(unknown)}; '
                      f'it takes {", ".join(keys)}')
  return dict(d)


def _integer(d: Mapping, key: str, name: str, *, least: int, default: int | None = None):
  value = d.get(key, default)
  if value is None:
    raise ConfigError(f'{name} needs {key} (an integer >= {least})')
  if not isinstance(value, int) or isinstance(value, bool) or value < least:
    raise ConfigError(f'{name}: {key} must be an integer >= {least}, got {value!r}')
  return value


# --- The trainer's end of a trial ---------------------------------------------------

def parse_trial(arg: str) -> tuple[str, int]:
  """`--search-trial JOURNAL#NUMBER` → (journal path, trial number)."""
  path, sep, number = arg.rpartition('#')
  if not sep or not path or not number.isdigit():
    raise UserError(f'--search-trial takes JOURNAL#NUMBER (a study journal and a '
                    f'trial number, e.g. searches/lr/study.journal#3), got {arg!r}')
  return path, int(number)


class TrialReporter:
  """Trial `number` of the study in `journal`, as its trainer sees it:
  `report(step, metrics, last)` hands the evaluation's objective to the study
  and says whether the pruner stops the trial there.

  Only process 0 (`enabled`) talks to the study; the trainer shares its
  decision with the others. A relaunched trial (its driver was killed, the
  trainer resumes from a checkpoint) evaluates again at steps it reported
  before: Optuna keeps the first value of a step and warns at a second, so
  those steps are not reported again, and the pruner decides on the values
  the study holds. A decision to stop is recorded in the trial (PRUNED_AT)
  before the trainer acts on it, and holds for a relaunch.
  """

  def __init__(self, journal: str, number: int, *, enabled: bool = True):
    self.journal, self.number, self.enabled = journal, number, enabled
    self.objective, self.direction = DEFAULT_OBJECTIVE, 'minimize'
    self._trial, self._reported, self._pruned_at, self._state = None, {}, None, None
    if enabled:
      self._attach()

  @classmethod
  def from_arg(cls, arg: str, *, enabled: bool = True) -> TrialReporter:
    journal, number = parse_trial(arg)
    return cls(journal, number, enabled=enabled)

  def _attach(self) -> None:
    if not os.path.isfile(self.journal):
      raise UserError(f'--search-trial: no study journal at {self.journal}')
    module = load_optuna()
    store = storage(self.journal)
    where = f'{self.journal}#{self.number}'
    try:
      study_id = store.get_study_id_from_name(STUDY)
      trial_id = store.get_trial_id_from_study_id_trial_number(study_id, self.number)
    except KeyError:
      raise UserError(f'--search-trial {where}: the journal holds no study {STUDY!r} '
                      f'with a trial {self.number}') from None
    attrs = store.get_study_user_attrs(study_id)
    self.objective = attrs.get('objective', DEFAULT_OBJECTIVE)
    self.direction = attrs.get('direction', 'minimize')
    # The driver's sampler is not needed here (the trial has its parameters)
    # and may not be rebuildable (a grid's values): an inert one.
    study = module.load_study(study_name=STUDY, storage=store,
                              sampler=module.samplers.RandomSampler(),
                              pruner=make_pruner(attrs.get('pruner', {'name': 'none'})))
    frozen = store.get_trial(trial_id)
    self._state = frozen.state
    self._reported = dict(frozen.intermediate_values)
    self._pruned_at = frozen.user_attrs.get(PRUNED_AT)
    self._trial = compat.attach_trial(study, trial_id)

  def value(self, metrics: Mapping[str, float]) -> float:
    """The objective in an evaluation's `metrics`."""
    if self.objective not in metrics:
      raise UserError(f'the search objective {self.objective!r} is not among the '
                      f'evaluation metrics ({", ".join(sorted(metrics))})')
    return float(metrics[self.objective])

  def report(self, step: int, metrics: Mapping[str, float], last: bool = False) -> bool:
    """Report the evaluation of `step`; True when the pruner stops the trial
    there (never at its `last` step: it has finished). Process 0's answer;
    the others answer False."""
    value = self.value(metrics)
    if not self.enabled:
      return False
    if self._state != load_optuna().trial.TrialState.RUNNING:
      raise UserError(f'trial {self.number} of {self.journal} is {self._state.name} in '
                      f'the study already: it takes no more reports. Start a new trial '
                      f'(the search driver does) or train without --search-trial')
    if step in self._reported:
      log.info('step %d of trial %d reported before (%s %.6g); not again', step,
               self.number, self.objective, self._reported[step])
    else:
      self._trial.report(value, step)
      self._reported[step] = value
    if last:
      return False
    if self._pruned_at is not None and step >= self._pruned_at:
      return True           # decided before a relaunch
    if not self._trial.should_prune():
      return False
    self._trial.set_user_attr(PRUNED_AT, step)
    self._pruned_at = step
    return True
