"""Search reports: the trials of a hyperparameter search, what pruning saved,
and Optuna's own figures, in the same report as a sweep's.

A search directory (`rundir.SearchDir`, docs/search.md) holds `search.json`
(the search file, its space, objective and direction, sampler, pruner,
provenance), `study.journal` (Optuna's file journal, study `search`), one
run directory per trial, `trial_NNN/`, and, after `search --confirm`, a
sweep directory `confirm/`. The study is read from the journal as it is,
without the driver's lock: a search that is running shows its trials so far.

Each trial's row: its number, its parameters, its objective value (a pruned
trial's last reported one in parentheses), its state, the training steps it
ran and its wall time (the trial's user attributes `steps` and
`wall_seconds` the driver records, else its run directory's result.json or
metrics.jsonl). Pruning's saving compares the steps the complete and pruned
trials ran with each of them trained to the end (`max_steps`, the pruner's).

  search = collect('runs/search_demo')
  print(format_text(search))           # or format_markdown / format_json
  write_html(search, 'runs/search_demo')   # DIR/report.html, offline
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import warnings
from typing import Any

from inception_jax import report, rundir
from inception_jax.errors import UserError

STUDY = 'search'                 # the study's name in the journal
# Optuna's trial states as this report (and sweeps) word them.
STATES = {'COMPLETE': 'complete', 'PRUNED': 'pruned', 'FAIL': 'failed',
          'RUNNING': 'running', 'WAITING': 'waiting'}
# Parameter importances need a spread of finished values to tell anything.
MIN_FOR_IMPORTANCE = 2


@dataclasses.dataclass
class Trial:
  """One Optuna trial and its run directory (`directory`, relative to the
  search directory). `value`: the objective at the end (complete trials);
  `last_value` the last one it reported (a pruned trial's, where it stopped).
  `steps`: training steps it ran; `wall_seconds`: its training's wall time."""
  number: int
  state: str
  params: dict[str, Any]
  directory: str
  value: float | None = None
  last_value: float | None = None
  steps: int | None = None
  pruned_at_step: int | None = None
  wall_seconds: float | None = None
  attempts: int | None = None
  error: str = ''                # why it failed, as the driver recorded it
  intermediate: dict[int, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Saving:
  """Training steps the complete and pruned trials ran (`used`) against each
  of them trained to `max_steps` (`full`)."""
  trials: int
  used: int
  max_steps: int

  @property
  def full(self) -> int:
    return self.trials * self.max_steps

  @property
  def percent(self) -> float:
    """How many fewer steps, in % of `full`."""
    return 100 * (1 - self.used / self.full)


@dataclasses.dataclass
class SearchReport:
  name: str
  directory: str
  objective: str
  direction: str
  params: list[str]              # the space's keys, in the search's order
  trials: list[Trial]
  record: dict                   # search.json
  max_steps: int | None = None
  confirm: report.Report | None = None
  confirm_note: str = ''         # why there is no confirmation table ('' if none is due)
  runs: report.Report | None = None   # the trials' run directories, for provenance
  study: Any = None              # the optuna.Study, for the figures

  @property
  def best(self) -> Trial | None:
    """The complete trial with the best value in the study's direction."""
    done = [t for t in self.trials if t.state == 'complete' and _finite(t.value)]
    # A stable sort: of equal values, the earliest trial.
    done.sort(key=lambda t: t.value, reverse=self.direction == 'maximize')
    return done[0] if done else None

  @property
  def saving(self) -> Saving | None:
    """None until a complete or pruned trial knows its steps, or without `max_steps`."""
    ran = [t for t in self.trials if t.state in ('complete', 'pruned')]
    if not ran or not self.max_steps or any(t.steps is None for t in ran):
      return None
    return Saving(len(ran), sum(t.steps for t in ran), self.max_steps)

  def count(self, state: str) -> int:
    return sum(t.state == state for t in self.trials)


def is_search(directory: str) -> bool:
  """Whether `directory` is a search directory (it holds search.json)."""
  return os.path.isfile(rundir.SearchDir(directory).record)


# Collecting.

def load_study(directory: str):
  """The study of a search directory, read from its journal (no lock taken,
  nothing written)."""
  try:
    import optuna
  except ImportError:
    raise UserError("reading a search needs optuna, the `search` extra: pip install "
                    "'inception_jax[search]'") from None
  from optuna.storages import JournalStorage
  from optuna.storages.journal import JournalFileBackend
  path = rundir.SearchDir(directory).journal
  if not os.path.isfile(path):       # Optuna's backend would create it
    raise UserError(f'{directory} holds no study yet ({os.path.basename(path)} is '
                    f'missing): the search has not started a trial')
  try:
    return optuna.load_study(study_name=STUDY,
                             storage=JournalStorage(JournalFileBackend(path)))
  except KeyError:
    raise UserError(f'{path} holds no study named {STUDY!r}: not a search\'s '
                    f'journal') from None
  except ValueError as e:            # a line that is not JSON: damage or a hand edit
    raise UserError(f'{path} is damaged: {e}') from None


def collect(directory: str) -> SearchReport:
  """Read a search directory into a `SearchReport` (trials by number)."""
  if not is_search(directory):
    raise UserError(f'{directory} is not a search directory (no search.json)')
  search_dir = rundir.SearchDir(directory)
  record = search_dir.read_record() or {}
  study = load_study(directory)
  attrs = study.user_attrs
  trials = [_trial(directory, t) for t in study.get_trials(deepcopy=False)]
  # In the order the driver asked for them (search.json's keys are sorted).
  params = list(dict.fromkeys([*(k for t in trials for k in t.params),
                               *(record.get('space') or {})]))
  confirm, confirm_note = _confirm(search_dir.confirm)
  return SearchReport(
      name=record.get('name') or os.path.basename(os.path.abspath(directory)),
      directory=directory,
      objective=attrs.get('objective') or record.get('objective') or 'objective',
      direction=attrs.get('direction') or study.direction.name.lower(),
      params=params, trials=trials, record=record,
      max_steps=_max_steps(attrs, record, trials), confirm=confirm,
      confirm_note=confirm_note, runs=_runs(directory, trials), study=study)


def _trial(directory: str, frozen) -> Trial:
  attrs = frozen.user_attrs
  run_dir = rundir.SearchDir(directory).trial(frozen.number)
  result = run_dir.read_result() or {}
  intermediate = dict(sorted(frozen.intermediate_values.items()))
  state = STATES.get(frozen.state.name, frozen.state.name.lower())
  steps = attrs.get('steps')
  if steps is None:
    steps = result.get('pruned_at_step', result.get('steps'))
  if steps is None or state == 'running':   # the steps it logged so far
    logged = [row['step'] for row in run_dir.read_metrics()]
    steps = max([*logged, steps or 0]) if logged else steps
  wall = attrs.get('wall_seconds', result.get('wall_time_sec'))
  if wall is None and frozen.duration is not None:
    wall = frozen.duration.total_seconds()
  return Trial(
      number=frozen.number, state=state, params=dict(frozen.params),
      directory=os.path.relpath(run_dir.path, directory),
      value=frozen.value if state == 'complete' else None,
      last_value=list(intermediate.values())[-1] if intermediate else None,
      steps=steps, pruned_at_step=result.get('pruned_at_step'), wall_seconds=wall,
      attempts=attrs.get('attempts'), error=attrs.get('error') or '',
      intermediate=intermediate)


def _max_steps(attrs: dict, record: dict, trials: list[Trial]) -> int | None:
  """Steps a trial trained to the end runs: the pruner's `max_steps` (study
  attribute, else search.json), else the most a complete trial ran."""
  for pruner in (attrs.get('pruner'), record.get('pruner')):
    # 'auto' where the base config gives epochs of a dataset not yet opened.
    if isinstance(pruner, dict) and type(pruner.get('max_steps')) is int:
      return pruner['max_steps']
  done = [t.steps for t in trials if t.state == 'complete' and t.steps]
  return max(done) if done else None


def _confirm(path: str) -> tuple[report.Report | None, str]:
  """The confirmation sweep's report, or why there is none ('' where no
  `--confirm` has run)."""
  if not os.path.isdir(path):
    return None, ''
  try:
    return report.collect(path), ''
  except UserError:
    return None, f'{path}: no confirmation run has started yet'


def _runs(directory: str, trials: list[Trial]) -> report.Report:
  """The trials' run directories as a sweep report's rows: their provenance
  (commits, devices, when they finished) as a sweep's report words it."""
  search_dir = rundir.SearchDir(directory)
  rows = []
  for trial in trials:
    run_dir = search_dir.trial(trial.number)
    result = run_dir.read_result()
    seed = report.Seed(seed=None, directory=trial.directory, state=trial.state,
                       finished=result is not None)
    for field in ('devices', 'device_kind', 'platform', 'finished_at', 'commit', 'dirty'):
      setattr(seed, field, (result or {}).get(field))
    rows.append(report.Row(name=trial.directory, runs=[seed]))
  return report.Report(name='', directory=directory, rows=rows,
                       provenance=dict(search_dir.read_record({}).get('provenance') or {}))


# The table, shared by every format.

def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def _param(value: Any) -> str:
  if isinstance(value, float):
    return format(value, '.4g')
  return str(value)


def _value(trial: Trial) -> str:
  if _finite(trial.value):
    return format(trial.value, '.4g')
  if trial.state == 'pruned' and _finite(trial.last_value):
    return f'({trial.last_value:.4g})'
  return ''


def _steps(trial: Trial) -> str:
  return '' if trial.steps is None else format(trial.steps, ',')


LEFT = ('trial', 'state')


def table(search: SearchReport) -> tuple[list[str], list[list[str]]]:
  """The header and a row of cells per trial, by trial number."""
  header = ['trial', *search.params, search.objective, 'steps', 'wall time', 'state']
  rows = [[str(t.number), *(_param(t.params[k]) if k in t.params else ''
                            for k in search.params),
           _value(t), _steps(t), report.duration(t.wall_seconds), t.state]
          for t in search.trials]
  return header, rows


def footer(search: SearchReport) -> list[str]:
  return [
      f'{search.objective}: its value at the end of training ({search.direction}); '
      f'(value): the last one a pruned trial reported, where the pruner stopped it. '
      f'steps: the training steps the trial ran; wall time: its training\'s.',
      'running: started and not finished, or left so by a search that was stopped '
      '(rerunning the same search command trains it on).']


def saving_line(search: SearchReport) -> str:
  """What pruning saved, in training steps, against every trial trained to the end."""
  s = search.saving
  if s is None:
    return ('pruning: no complete or pruned trial yet' if not search.count('complete')
            + search.count('pruned') else 'pruning: the steps trained to the end are '
            'unknown (no max_steps recorded)')
  noun = 'trial' if s.trials == 1 else 'trials'
  return (f'pruning: {s.used:,} training steps over {s.trials} complete or pruned '
          f'{noun}, against {s.full:,} trained to the end ({s.trials} × {s.max_steps:,}): '
          f'{s.percent:.1f} % fewer steps')


def best_line(search: SearchReport) -> str:
  best = search.best
  if best is None:
    return 'best: no complete trial yet'
  params = ', '.join(f'{k}={_param(v)}' for k, v in best.params.items())
  return (f'best: trial {best.number}, {search.objective} {best.value:.4g}, with '
          f'{params} ({best.directory})')


def heading(search: SearchReport) -> str:
  """'search NAME (DIR): FILE:ARG; 3 complete, 2 pruned … of N trials'."""
  r = search.record
  source = r.get('search') or ''                # the search file and its arg
  counts = ', '.join(f'{search.count(s)} {s}' for s in STATES.values() if search.count(s))
  total = f' of {r["trials"]} trials' if r.get('trials') else ''
  what = '; '.join(p for p in (source, (counts or 'no trials') + total) if p)
  return f'search {search.name} ({search.directory}): {what}'


def _summary(search: SearchReport) -> list[str]:
  """Pruning's saving, the best trial, why trials failed, a missing confirmation."""
  lines = [saving_line(search), best_line(search)]
  lines += [f'{t.directory} failed: {t.error}' for t in search.trials
            if t.state == 'failed' and t.error]
  return lines + ([search.confirm_note] if search.confirm_note else [])


# Formats.

def format_text(search: SearchReport) -> str:
  """The trials' aligned table, its footer, pruning's saving, the best trial,
  and the confirmation sweep's table when there is one."""
  lines = [heading(search), '', *report.aligned(*table(search), left=LEFT), '',
           *footer(search), '', *_summary(search)]
  if search.confirm is not None:
    lines += ['', 'confirmation: the best trials and the base config, with seeds',
              report.format_text(search.confirm)]
  return '\n'.join(lines)


def format_markdown(search: SearchReport) -> str:
  escape = lambda c: c.replace('|', r'\|').replace('*', r'\*')
  line = lambda cells: '| ' + ' | '.join(map(escape, cells)) + ' |'
  header, rows = table(search)
  lines = [f'### Search `{search.name}`', '', escape(heading(search)), '', line(header),
           line(['---' if t in LEFT else '---:' for t in header]), *map(line, rows)]
  lines += [part for f in footer(search) for part in ('', escape(f))]
  lines += ['', *(f'- {escape(s)}' for s in _summary(search))]
  if search.confirm is not None:
    lines += ['', '#### Confirmation', '', report.format_markdown(search.confirm)]
  return '\n'.join(lines)


def format_json(search: SearchReport) -> str:
  """One JSON object: the search, its trials, the saving, the best trial and
  the confirmation sweep's rows (as `compare --format json` on it); NaN/inf
  become null."""
  s, best = search.saving, search.best
  obj = {
      'name': search.name, 'directory': search.directory,
      'objective': search.objective, 'direction': search.direction,
      'params': search.params, 'max_steps': search.max_steps,
      'counts': {state: search.count(state) for state in STATES.values()},
      'trials': [{**dataclasses.asdict(t),
                  'intermediate': [[step, v] for step, v in t.intermediate.items()]}
                 for t in search.trials],
      'saving': None if s is None else {'trials': s.trials, 'steps_used': s.used,
                                        'steps_full': s.full, 'max_steps': s.max_steps,
                                        'percent': s.percent},
      'best': None if best is None else {'number': best.number, 'value': best.value,
                                         'params': best.params,
                                         'directory': best.directory},
      'confirm': None if search.confirm is None else json.loads(
          report.format_json(search.confirm)),
  }
  return json.dumps(report.finite(obj), indent=2, allow_nan=False)


# HTML: the report's page, Optuna's figures in place of the learning curves.

STYLE = report.STYLE + """
tr.best td { font-weight: 600; background: #eef6ee; }
tr.pruned td, tr.running td, tr.waiting td { color: #666; }
"""


def write_html(search: SearchReport, directory: str) -> str:
  """Write `directory/report.html` (self-contained, offline); returns its path."""
  header, rows = table(search)
  best = search.best
  classes = ['best' if best is not None and t is best else t.state for t in search.trials]
  confirm = search.confirm
  parts = [
      f'<h1>Search {html.escape(search.name)}</h1>',
      f'<p>{html.escape(heading(search))}</p>',
      report.provenance_html(search.runs),
      report.table_html(header, rows, classes),
      *(f'<p class="footer">{html.escape(f)}</p>' for f in footer(search)),
      '<ul>' + ''.join(f'<li>{html.escape(s)}</li>' for s in _summary(search)) + '</ul>',
      '' if confirm is None else
      (f'<h2>Confirmation with seeds</h2><p class="footer">'
       f'{html.escape(confirm.directory)}: the best trials and the base config '
       f'retrained with seeds.</p>' + report.table_html(*report.table(confirm)) +
       ''.join(f'<p class="footer">{html.escape(f)}</p>' for f in report.FOOTER)),
      *_figures(search)]
  return report.write_page(rundir.SearchDir(directory).report_html,
                           f'search {search.name}', STYLE, parts)


def figures(search: SearchReport) -> list[tuple[Any, str]]:
  """Optuna's Plotly figures of the study: (figure, what it shows), or
  (None, why it is missing)."""
  from optuna import importance, visualization
  study, target = search.study, search.objective
  complete = search.count('complete')
  reported = any(t.intermediate for t in search.trials)
  with warnings.catch_warnings():
    # Optuna warns of experimental features (PED-ANOVA in older versions).
    warnings.simplefilter('ignore')
    return [
        (visualization.plot_optimization_history(study, target_name=target),
         f'Each complete trial\'s {target} by trial number, and the best so far.')
        if complete else (None, 'Optimization history: no complete trial yet.'),
        (visualization.plot_intermediate_values(study),
         f'The {target} each trial reported at each evaluation: a pruned trial\'s line '
         f'ends where the pruner stopped it.')
        if reported else (None, 'Intermediate values: no trial has reported one yet.'),
        (visualization.plot_parallel_coordinate(study, target_name=target),
         'Each complete trial\'s parameters and value, one line each; drag along an '
         'axis to pick a range.')
        if complete else (None, 'Parallel coordinates: no complete trial yet.'),
        # PED-ANOVA: Optuna's default from 5.0; fANOVA, 4.x's, needs scikit-learn.
        (visualization.plot_param_importances(
            study, evaluator=importance.PedAnovaImportanceEvaluator(), target_name=target),
         f'How much of the spread of {target} over the complete trials each parameter '
         f'accounts for (Optuna\'s PED-ANOVA); few trials make it rough.')
        if complete >= MIN_FOR_IMPORTANCE else
        (None, f'Parameter importances: need {MIN_FOR_IMPORTANCE} complete trials or '
               f'more ({complete} so far).'),
    ]


def _figures(search: SearchReport) -> list[str]:
  """The figures' HTML, each under what it shows, plotly.js embedded in the
  first drawn; a line for each missing."""
  parts, drawn = [], 0
  for figure, note in figures(search):
    parts.append(f'<p class="footer">{html.escape(note)}</p>')
    if figure is not None:
      figure.update_layout(height=460, template='plotly_white')
      parts.append(f'<div class="figure">{report.figure_html(figure, drawn)}</div>')
      drawn += 1
  return parts


def render(directory: str, fmt: str = 'text') -> str:
  """The report of search directory `directory` as `fmt`; 'html' writes
  report.html and says where."""
  if fmt not in report.FORMATS:
    raise UserError(f'unknown report format {fmt!r}; choose one of '
                    f'{", ".join(report.FORMATS)}')
  search = collect(directory)
  if fmt == 'html':
    return f'wrote {write_html(search, directory)}'
  return {'text': format_text, 'markdown': format_markdown,
          'json': format_json}[fmt](search)
