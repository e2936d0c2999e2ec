"""Sweep reports: one table of runs beside the paper's figures, plus curves.

A sweep directory holds `sweep.json` (runs in order, their seeds, paper
figures, the state of each run directory, optionally the sweep's provenance)
and one run directory per run, DIR/NAME, or per seed of a run with seeds,
DIR/NAME/seed_K (`config.json`, `metrics.jsonl`, and `result.json` once
finished). Without `sweep.json`, every subdirectory with a `config.json` or
`result.json` is a run, and every one holding seed_K run directories a run
with those seeds, sorted by name.

Top-1 / top-5 figures are errors in % throughout: `eval/top1_error` where a
run logged it, else 100 · (1 − `eval/top1`), the accuracy fraction that runs
written before that convention logged (`rundir.error_percent`).

Each row is one run name: the mean ± standard deviation of its figures over
the seeds that finished, the config keys it changes against the first row,
and the difference of its mean top-1 error to the previous and to the first
row with the p-value of Welch's t-test (two-sided, * where p < ALPHA) where
both rows have two or more seeds. Rows whose every seed ends at or below
CEILING % top-1 error tie on it: they are named, and compared instead by
their final eval loss and by the first eval step at which each seed reached
REACHED % error, with the same test. A run the last sweep found stale (run
under another config than the sweep file's) keeps its figures, with a note
saying so.

  report = collect('runs/table3')
  print(format_text(report))          # or format_markdown / format_json
  write_html(report, 'runs/table3')   # runs/table3/report.html: table, provenance,
                                      # interactive Plotly figures, offline

A search directory's report (its trials, Optuna's figures) is search_report's,
on this page's parts (`write_page`, `table_html`, `figure_html`, ...).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import html
import json
import math
import os
import statistics
import warnings
from typing import Any, Callable

from inception_jax import rundir
from inception_jax.errors import UserError

FORMATS = ('text', 'markdown', 'json', 'html')
# Curves kept from metrics.jsonl; eval top-1 as error in % whatever the run logged.
CURVES = ('train/loss', 'eval/top1_error', 'eval/loss')
ALPHA = 0.05
# A row is at the ceiling when every finished seed ends at or below this top-1
# error (%): there its top-1 error no longer separates it from another such row
# (the demo's 10-class dataset ends several rows at 0.1–0.4 %).
CEILING = 1.0
# Rows at the ceiling are compared by the first eval step at which a seed's
# top-1 error reached this (%): how fast, where how far no longer tells.
REACHED = 5.0
# A row's state is the most serious of its seeds', in this order.
SEVERITY = ('failed', 'stale', 'interrupted', 'running', 'pending', 'unfinished', 'done')
# Config keys that say nothing about what a row changes: the seed (rows share
# seeds) and bookkeeping (logging, tracking, scheduling; rundir.NEUTRAL_KEYS).
NOT_CHANGES = ('seed', *rundir.NEUTRAL_KEYS)


@dataclasses.dataclass
class Seed:
  """One run directory of a row (DIR/NAME or DIR/NAME/seed_K): its figures
  (None until it finishes) and curves. `seed` is None where the config does
  not say (a run directory without config.json). `reached_step`: the first
  eval step at which its top-1 error was at most REACHED %."""
  seed: int | None
  directory: str                 # relative to the sweep directory
  state: str
  message: str = ''
  finished: bool = False
  params: int | None = None
  gmacs: float | None = None
  image_size: int | None = None
  steps: int | None = None
  top1_error: float | None = None
  top5_error: float | None = None
  eval_loss: float | None = None
  reached_step: int | None = None
  images_per_sec: float | None = None
  wall_time_sec: float | None = None
  devices: int | None = None
  device_kind: str | None = None
  platform: str | None = None
  finished_at: str | None = None
  commit: str | None = None             # the checkout that trained it, and
  dirty: bool | None = None             # whether it had uncommitted changes
  config: dict | None = None     # flattened config.json
  curves: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Difference:
  """Mean of a per-seed figure of a row minus another's. `significant`:
  Welch's t-test gives p < ALPHA; None (with the reason in `note`) where it
  cannot be run."""
  delta: float
  p_value: float | None = None
  significant: bool | None = None
  note: str = ''


@dataclasses.dataclass
class Row:
  """One run name: its seeds, the paper's figures, the comparison with the
  previous and the first row (None for the first row, or without results),
  the config keys it changes against the first row ({key: [first row's
  value, this row's]}; None without configs to compare), and, when it ties
  with other rows at the ceiling, the comparison with the first such row
  by eval loss and by the step that reached REACHED % (`tie_loss`, `tie_reached`)."""
  name: str
  runs: list[Seed]
  paper: dict[str, Any] = dataclasses.field(default_factory=dict)
  vs_prev: Difference | None = None
  vs_first: Difference | None = None
  changes: dict[str, list] | None = None
  tie_loss: Difference | None = None
  tie_reached: Difference | None = None

  def values(self, key: str) -> list[float]:
    """`key` of every finished seed, where finite."""
    values = (getattr(s, key) for s in self.runs if s.finished)
    return [v for v in values if v is not None and math.isfinite(v)]

  def mean(self, key: str) -> float | None:
    values = self.values(key)
    return statistics.fmean(values) if values else None

  def std(self, key: str) -> float | None:
    """Sample standard deviation (n − 1) over seeds; None below two seeds."""
    values = self.values(key)
    return statistics.stdev(values) if len(values) > 1 else None

  def common(self, key: str) -> Any:
    """`key` of the first finished seed (the same for every seed)."""
    return next((getattr(s, key) for s in self.runs if s.finished), None)

  @property
  def seeds(self) -> int:
    """How many seeds the top-1 error is averaged over."""
    return len(self.values('top1_error'))

  @property
  def at_ceiling(self) -> bool:
    """Every finished seed ends at or below CEILING % top-1 error."""
    errors = self.values('top1_error')
    return bool(errors) and max(errors) <= CEILING

  @property
  def state(self) -> str:
    states = [s.state for s in self.runs]
    return min(states, key=lambda s: SEVERITY.index(s) if s in SEVERITY else -1)

  @property
  def state_text(self) -> str:
    """'done', or how many seeds are in each state ('2 done, 1 failed')."""
    states = [s.state for s in self.runs]
    if len(set(states)) == 1:
      return states[0]
    return ', '.join(f'{states.count(s)} {s}' for s in dict.fromkeys(states))


@dataclasses.dataclass
class Report:
  name: str
  directory: str
  rows: list[Row]
  provenance: dict = dataclasses.field(default_factory=dict)   # sweep.json's

  @property
  def has_paper(self) -> bool:
    return any(row.paper for row in self.rows)

  @property
  def tied(self) -> list[Row]:
    """The rows at the ceiling, when two or more are (else none)."""
    rows = [row for row in self.rows if row.at_ceiling]
    return rows if len(rows) > 1 else []


# Collecting.

def collect(directory: str) -> Report:
  """Read a sweep directory into a `Report` (rows in sweep order)."""
  if not os.path.isdir(directory):
    raise UserError(f'no sweep directory {directory!r}')
  record = rundir.SweepDir(directory).read_record()
  if record is None:
    runs, status, provenance = _discover(directory), {}, {}
    name = os.path.basename(os.path.abspath(directory))
  else:
    runs, status = record.get('runs', []), record.get('status', {})
    provenance = record.get('provenance') or {}
    name = record.get('name') or os.path.basename(os.path.abspath(directory))
  if not runs:
    raise UserError(f'{directory} holds no runs: expected a sweep.json or run '
                    f'directories with config.json or result.json')
  rows = [_row(directory, run, status) for run in runs]
  first = _config(rows[0])
  for i, row in enumerate(rows[1:], 1):
    row.vs_prev = difference(row, rows[i - 1])
    row.vs_first = difference(row, rows[0])
    row.changes = changes(first, _config(row))
  report = Report(name=name, directory=directory, rows=rows, provenance=provenance)
  for row in report.tied[1:]:
    row.tie_loss = difference(row, report.tied[0], 'eval_loss')
    row.tie_reached = difference(row, report.tied[0], 'reached_step')
  return report


def _discover(directory: str) -> list[dict]:
  """Runs of a directory without sweep.json: NAME/ with a config.json or
  result.json, or NAME/ holding seed_K run directories."""
  runs = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if any(os.path.isfile(os.path.join(path, f)) for f in (rundir.CONFIG, rundir.RESULT)):
      runs.append({'name': name})
    elif rundir.seed_dirs(path):
      runs.append({'name': name, 'seeds': rundir.seed_dirs(path)})
  return runs


def _row(directory: str, run: dict, status: dict) -> Row:
  seeds = run.get('seeds')
  keys = ([(None, run['name'])] if seeds is None else
          [(k, rundir.seed_name(run['name'], k)) for k in seeds])
  return Row(name=run['name'], paper=dict(run.get('paper') or {}),
             runs=[_seed(directory, key, k, status.get(key, {})) for k, key in keys])


def _seed(directory: str, key: str, seed: int | None, status: dict) -> Seed:
  run_dir = rundir.SweepDir(directory).run(key)
  workdir, result, config = run_dir.path, run_dir.read_result(), run_dir.read_config()
  if seed is None:
    seed = (config or {}).get('seed')
  run = Seed(seed=seed, directory=key,
             state=status.get('state') or ('done' if result else 'unfinished'),
             message=status.get('message') or '', curves=_curves(workdir),
             config=None if config is None else rundir.flatten(config))
  run.reached_step = next((step for step, error in run.curves['eval/top1_error']
                           if error <= REACHED), None)
  if result:
    metrics = result.get('metrics', {})
    run.finished = True
    run.params = result.get('params')
    run.gmacs = None if result.get('macs') is None else result['macs'] / 1e9
    run.image_size = result.get('image_size')
    run.steps = result.get('steps')
    run.top1_error = rundir.error_percent(metrics, 'top1')
    run.top5_error = rundir.error_percent(metrics, 'top5')
    run.eval_loss = metrics.get('eval/loss')
    run.images_per_sec = result.get('train_images_per_sec')
    run.wall_time_sec = result.get('wall_time_sec')
    for field in ('devices', 'device_kind', 'platform', 'finished_at', 'commit', 'dirty'):
      setattr(run, field, result.get(field))
  return run


def _curves(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """CURVES of a run directory's metrics.jsonl as (step, value) lists; the
  eval top-1 error in % from either metric convention."""
  curves = {key: [] for key in CURVES}
  for line in rundir.read_metrics(workdir):   # skips a line cut short by a kill
    values = {'train/loss': line.get('train/loss'), 'eval/loss': line.get('eval/loss'),
              'eval/top1_error': rundir.error_percent(line, 'top1')}
    for key, value in values.items():
      if isinstance(value, (int, float)):
        curves[key].append((int(line['step']), float(value)))
  return curves


def _config(row: Row) -> dict | None:
  """The flattened config of the row's first finished seed, else its first
  with a config.json (the seeds differ only in `seed`)."""
  configs = [s.config for s in row.runs if s.finished and s.config is not None]
  configs += [s.config for s in row.runs if s.config is not None]
  return configs[0] if configs else None


def changes(first: dict | None, other: dict | None) -> dict[str, list] | None:
  """{key: [value in `first`, value in `other`]} for the flattened keys
  whose values differ (a key one of them lacks counts as differing), less
  NOT_CHANGES; None unless both are known."""
  if first is None or other is None:
    return None
  return {k: [first.get(k), other.get(k)] for k in sorted(first.keys() | other.keys())
          if (k in first, first.get(k)) != (k in other, other.get(k))
          and not rundir.matches(k, NOT_CHANGES)}


# Spread and significance.

def difference(row: Row, other: Row, key: str = 'top1_error') -> Difference | None:
  """Mean `key` (any per-seed figure of `Seed`) of `row` minus `other`'s,
  with Welch's t-test (two-sided) where each has two or more seeds; None
  unless both have values."""
  a, b = row.values(key), other.values(key)
  if not a or not b:
    return None
  delta = statistics.fmean(a) - statistics.fmean(b)
  if min(len(a), len(b)) < 2:
    return Difference(delta, note='n/a (1 seed)')
  if statistics.stdev(a) == statistics.stdev(b) == 0:
    return Difference(delta, note='n/a (no spread)')
  from scipy import stats
  with warnings.catch_warnings():
    # One side's seeds agree exactly (no spread): the test is still defined,
    # and scipy's "precision loss" warning about it says nothing.
    warnings.simplefilter('ignore', RuntimeWarning)
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
  return Difference(delta, p, p < ALPHA)


# The table, shared by every format.

def _num(fmt: str) -> Callable[[Any], str]:
  return lambda x: '' if x is None or not math.isfinite(x) else format(x, fmt)


def duration(seconds: float | None) -> str:
  if seconds is None or not math.isfinite(seconds):
    return ''
  if seconds < 60:
    return f'{seconds:.1f}s'
  minutes, secs = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f'{minutes}m{secs:02d}s'
  return f'{minutes // 60}h{minutes % 60:02d}m'


def _spread(row: Row, key: str, count: bool = False, fmt: str = '.2f') -> str:
  """'24.00 ± 0.50' over the seeds (no ± with one seed), '(n)' with `count`."""
  mean, std = row.mean(key), row.std(key)
  if mean is None:
    return ''
  text = format(mean, fmt) + ('' if std is None else f' ± {std:{fmt}}')
  return text + (f' ({len(row.values(key))})' if count else '')


def _p(p: float) -> str:
  """'p 0.20', 'p 0.012' (two significant digits), 'p < 0.001'."""
  return 'p < 0.001' if p < 0.001 else f'p {p:.2f}' if p >= 0.1 else f'p {p:.2g}'


def _delta(d: Difference | None, fmt: str = '+.2f') -> str:
  """'-0.80* (p 0.012)' beyond the noise, '-0.80 (p 0.43)' within it,
  '-0.80 n/a (1 seed)' untested."""
  if d is None:
    return ''
  if d.p_value is None:
    return format(d.delta, fmt) + (f' {d.note}' if d.note else '')
  return format(d.delta, fmt) + ('*' if d.significant else '') + f' ({_p(d.p_value)})'


# (title, cell of a Row, paper-only column); 'run' and 'state' align left.
COLUMNS = [
    ('run', lambda r: r.name, False),
    ('params', lambda r: _num(',')(r.common('params')), False),
    ('G mult-adds', lambda r: _num('.3f')(r.common('gmacs')), False),
    ('paper Bn ops', lambda r: _num('g')(r.paper.get('cost_bn_ops')), True),
    ('image', lambda r: _num('d')(r.common('image_size')), False),
    ('steps', lambda r: _num(',')(r.common('steps')), False),
    ('top-1 err', lambda r: _spread(r, 'top1_error', count=True), False),
    ('paper top-1', lambda r: _num('g')(r.paper.get('top1_error')), True),
    ('Δ prev', lambda r: _delta(r.vs_prev), False),
    ('Δ first', lambda r: _delta(r.vs_first), False),
    ('top-5 err', lambda r: _spread(r, 'top5_error'), False),
    ('paper top-5', lambda r: _num('g')(r.paper.get('top5_error')), True),
    ('img/s', lambda r: _num(',.1f')(r.mean('images_per_sec')), False),
    ('wall time', lambda r: duration(r.mean('wall_time_sec')), False),
    ('state', lambda r: r.state_text, False),
]


LEFT = ('run', 'state')

FOOTER = (
    'top-1 / top-5 err: error in %, mean ± standard deviation (n − 1) over the seeds '
    'that finished, (n) how many; img/s and wall time: mean per seed.',
    f'Δ prev / Δ first: mean top-1 error minus the previous / first row\'s, with the '
    f'p-value of Welch\'s t-test over seeds (two-sided); * exceeds the noise (p < '
    f'{ALPHA:g}); unmarked: within it; n/a (1 seed): one seed on either side, no test '
    f'possible; n/a (no spread): every seed of both rows agrees.')


def table(report: Report) -> tuple[list[str], list[list[str]]]:
  """The header and one row of cells per run; paper columns only if any."""
  columns = [c for c in COLUMNS if report.has_paper or not c[2]]
  return ([title for title, _, _ in columns],
          [[cell(row) for _, cell, _ in columns] for row in report.rows])


# Rows tied at the ceiling: what still separates them.
TIE_COLUMNS = [
    ('run', lambda r: r.name),
    ('top-1 err', lambda r: _spread(r, 'top1_error', count=True)),
    ('eval loss', lambda r: _spread(r, 'eval_loss', count=True, fmt='.4f')),
    ('Δ loss', lambda r: _delta(r.tie_loss, '+.4f')),
    (f'step to ≤{REACHED:g}%',
     lambda r: _spread(r, 'reached_step', count=True, fmt='.0f')),
    ('Δ step', lambda r: _delta(r.tie_reached, '+.0f')),
]


def tie_table(report: Report) -> tuple[list[str], list[list[str]]] | None:
  """The rows at the ceiling compared by final eval loss and by the first eval
  step that reached REACHED %; None unless two or more rows are there."""
  if not report.tied:
    return None
  return ([t for t, _ in TIE_COLUMNS],
          [[cell(row) for _, cell in TIE_COLUMNS] for row in report.tied])


def tie_note(report: Report) -> str:
  """What the tie table says, and why it is there; '' without a tie."""
  if not report.tied:
    return ''
  names = ', '.join(row.name for row in report.tied)
  return (f'At the ceiling: every seed of {names} ends at ≤ {CEILING:g} % top-1 error, '
          f'where top-1 error no longer separates them. Compared instead by the final '
          f'eval loss and by the first eval step at which each seed reached ≤ '
          f'{REACHED:g} % top-1 error (mean ± std (n)); Δ: minus '
          f'{report.tied[0].name}\'s, '
          f'with Welch\'s p over the same seeds (* p < {ALPHA:g}).')


STALE = 'its figures are those of the old config; `sweep --rerun-stale` trains it again'


def _notes(report: Report) -> list[str]:
  """A line for each run directory whose state has a message, but 'done'."""
  return [f'{run.directory}: {run.state}: {run.message}' + (
              '' if run.state != 'stale' else f'; {STALE}' if run.finished
              else '; `sweep --rerun-stale` trains it again')
          for row in report.rows for run in row.runs
          if run.message and run.state != 'done']


def change_lines(row: Row) -> list[str]:
  """'key: first row's value → this row's' for each config key the row changes."""
  show = lambda v: json.dumps(v) if not isinstance(v, str) else v
  return [f'{k}: {show(a)} → {show(b)}' for k, (a, b) in (row.changes or {}).items()]


# Formats.

def aligned(header: list[str], rows: list[list[str]], left=LEFT) -> list[str]:
  """Plain-text table lines: header, rule, rows; the columns titled in `left`
  left-aligned, the others (figures) right-aligned."""
  widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
  fmt = lambda line: '  '.join(
      cell.ljust(w) if title in left else cell.rjust(w)
      for title, cell, w in zip(header, line, widths)).rstrip()
  return [fmt(header), fmt(['-' * w for w in widths]), *map(fmt, rows)]


def format_text(report: Report) -> str:
  """An aligned plain-text table (names left, figures right), its footer,
  the rows tied at the ceiling compared otherwise, and notes."""
  header, rows = table(report)
  lines = [f'sweep {report.name} ({report.directory})', '', *aligned(header, rows),
           '', *FOOTER]
  tie = tie_table(report)
  if tie:
    lines += ['', tie_note(report), '', *aligned(*tie)]
  notes = _notes(report)
  return '\n'.join(lines + ([''] + notes if notes else []))


def format_markdown(report: Report) -> str:
  """A GitHub table under a heading, its footer, the tie comparison, notes."""
  escape = lambda c: c.replace('|', r'\|').replace('*', r'\*')
  line = lambda cells: '| ' + ' | '.join(map(escape, cells)) + ' |'
  md_table = lambda header, rows: [
      line(header), line(['---' if t in LEFT else '---:' for t in header]),
      *map(line, rows)]
  lines = [f'### Sweep `{report.name}`', '', *md_table(*table(report))]
  lines += [part for f in FOOTER for part in ('', escape(f))]
  tie = tie_table(report)
  if tie:
    lines += ['', escape(tie_note(report)), '', *md_table(*tie)]
  notes = _notes(report)
  return '\n'.join(lines + ([''] + [f'- {n}' for n in notes] if notes else []))


def format_json(report: Report) -> str:
  """A JSON list, one dict per row (per-seed figures under `per_seed`, no
  curves or configs); NaN/inf become null."""
  return json.dumps([finite(_row_dict(row, report)) for row in report.rows], indent=2,
                    allow_nan=False)


def _row_dict(row: Row, report: Report) -> dict:
  difference = lambda d: None if d is None else dataclasses.asdict(d)
  tie = None
  if any(row is r for r in report.tied):
    tie = {'eval_loss_mean': row.mean('eval_loss'), 'eval_loss_std': row.std('eval_loss'),
           'eval_loss_delta': difference(row.tie_loss),
           'reached_step_mean': row.mean('reached_step'),
           'reached_step_std': row.std('reached_step'),
           'reached_step_delta': difference(row.tie_reached),
           'versus': report.tied[0].name, 'ceiling': CEILING, 'reached': REACHED}
  return {
      'name': row.name, 'state': row.state, 'seeds': row.seeds,
      'top1_error_mean': row.mean('top1_error'), 'top1_error_std': row.std('top1_error'),
      'top5_error_mean': row.mean('top5_error'), 'top5_error_std': row.std('top5_error'),
      'top1_delta_prev': difference(row.vs_prev),
      'top1_delta_first': difference(row.vs_first),
      'eval_loss_mean': row.mean('eval_loss'), 'eval_loss_std': row.std('eval_loss'),
      'at_ceiling': row.at_ceiling, 'tie': tie, 'changes': row.changes,
      'params': row.common('params'), 'gmacs': row.common('gmacs'),
      'image_size': row.common('image_size'), 'steps': row.common('steps'),
      'images_per_sec': row.mean('images_per_sec'),
      'wall_time_sec': row.mean('wall_time_sec'), 'paper': row.paper,
      'per_seed': [{k: v for k, v in dataclasses.asdict(run).items()
                    if k not in ('curves', 'config')} for run in row.runs],
  }


def finite(x):
  """A JSON tree with NaN and infinities as None (JSON has neither)."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: finite(v) for k, v in x.items()}
  if isinstance(x, list):
    return [finite(v) for v in x]
  return x


# HTML: the tables, provenance, and interactive Plotly figures in one file
# that works offline (plotly.js embedded once, nothing fetched).

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child, th:last-child, td:last-child { text-align: left; }
th { background: #f4f4f4; }
th.paper, td.paper { color: #777; }
tr.failed td { background: #fdecea; }
tr.stale td { background: #fff4d6; color: #777; }
p.footer, p.tie, ul.provenance { color: #555; font-size: 0.9em; max-width: 60em; }
ul.changes code { white-space: nowrap; }
.figure { margin-top: 1.5em; }
"""


def write_html(report: Report, directory: str) -> str:
  """Write `directory/report.html` (self-contained, offline); returns its path."""
  header, rows = table(report)
  notes = ''.join(f'<li>{html.escape(n)}</li>' for n in _notes(report))
  footer = ''.join(f'<p class="footer">{html.escape(f)}</p>' for f in FOOTER)
  tie = tie_table(report)
  parts = [
      f'<h1>Sweep {html.escape(report.name)}</h1>',
      provenance_html(report),
      table_html(header, rows, [row.state for row in report.rows]),
      footer, f'<ul>{notes}</ul>' if notes else '',
      '' if not tie else (f'<h2>Rows tied at the ceiling</h2><p class="tie">'
                          f'{html.escape(tie_note(report))}</p>' + table_html(*tie)),
      _changes_html(report),
      *_figures(report)]
  return write_page(rundir.SweepDir(directory).report_html, report.name, STYLE, parts)


def write_page(path: str, title: str, style: str, parts: list[str]) -> str:
  """Write an HTML page of `parts` (the body's) to `path`; returns `path`.
  A sweep's report and a search's (search_report) share it."""
  page = ['<!DOCTYPE html>', '<html><head><meta charset="utf-8">',
          f'<title>{html.escape(title)}</title><style>{style}</style></head><body>',
          *parts, '</body></html>', '']
  try:
    rundir.write_text(path, '\n'.join(page))
  except OSError as e:
    raise UserError(f'cannot write {path}: {e.strerror or e} (--format text, markdown '
                    f'or json print to the terminal instead)') from None
  return path


def table_html(header: list[str], rows: list[list[str]],
               classes: list[str] | None = None) -> str:
  """A <table> in a horizontally scrolling box; paper columns greyed, each
  row's class its state (failed and stale rows are coloured)."""
  paper = ['paper' if title.startswith('paper') else '' for title in header]
  cell = lambda tag, text, cls: (f'<{tag} class="{cls}">' if cls else f'<{tag}>') + \
      f'{html.escape(text)}</{tag}>'
  head = ''.join(cell('th', t, c) for t, c in zip(header, paper))
  body = '\n'.join(
      (f'<tr class="{html.escape(cls)}">' if cls else '<tr>') +
      ''.join(cell('td', t, c) for t, c in zip(cells, paper)) + '</tr>'
      for cls, cells in zip(classes or [''] * len(rows), rows))
  return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>\n{body}\n'
          f'</tbody></table></div>')


def _changes_html(report: Report) -> str:
  """What each row after the first changes in its config, against the first."""
  items = []
  for row in report.rows[1:]:
    lines = change_lines(row)
    text = ('config unknown (no config.json)' if row.changes is None else
            'no config change' if not lines else
            '; '.join(f'<code>{html.escape(line)}</code>' for line in lines))
    items.append(f'<li><b>{html.escape(row.name)}</b>: {text}</li>')
  if not items:
    return ''
  return (f'<h2>What each row changes</h2><p class="footer">Config keys whose values '
          f'differ from the first row\'s ({html.escape(report.rows[0].name)}): first row '
          f'→ this row; the seed and bookkeeping keys (logging, tracking, scheduling) '
          f'left out.</p><ul class="changes">{"".join(items)}</ul>')


def provenance_lines(report: Report) -> list[str]:
  """Where the sweep's figures come from: its latest command, commit, start
  and host (sweep.json), the commits that trained its runs, the devices they
  used and when they finished (result.json), and when this report was
  written; unknown fields left out."""
  p = report.provenance
  lines = [f'command: {p["command"]}'] if p.get('command') else []
  if p.get('commit'):
    lines.append(f'commit: {p["commit"]}{_dirty(p.get("dirty"))}')
  if p.get('started'):
    lines.append(f'started: {_when(p["started"])}' +
                 (f' on {p["host"]}' if p.get('host') else ''))
  elif p.get('host'):
    lines.append(f'host: {p["host"]}')
  runs = [run for row in report.rows for run in row.runs if run.finished]
  trained = collections.Counter((run.commit, run.dirty) for run in runs if run.commit)
  lines += [f'{n} run{"s" if n != 1 else ""} trained at {commit}{_dirty(dirty)}'
            for (commit, dirty), n in trained.items()]
  lines += _devices(runs)
  done = sorted(run.finished_at for run in runs if run.finished_at)
  if done:
    lines.append(f'runs finished: {_when(done[0])}' +
                 (f' to {_when(done[-1])}' if done[-1] != done[0] else ''))
  now = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  return lines + [f'report written: {_when(now)}']


def _dirty(dirty: bool | None) -> str:
  return {True: ' with uncommitted changes', False: ' (clean)'}.get(dirty, '')


def _devices(runs: list[Seed]) -> list[str]:
  """'2 runs on 1 cpu device' per distinct setup that result.json records."""
  setups = collections.Counter(
      (run.devices, run.device_kind or run.platform) for run in runs
      if run.devices is not None or run.device_kind or run.platform)
  lines = []
  for (count, kind), n in setups.items():
    what = ' '.join(str(x) for x in (count, kind) if x is not None)
    plural = 's' if count is None or count != 1 else ''
    lines.append(f'{n} run{"s" if n != 1 else ""} on {what} device{plural}')
  return lines


def _when(text: str) -> str:
  """An ISO-8601 time to the minute ('2026-05-12 14:03 +0200'); as given when
  it does not parse."""
  try:
    return datetime.datetime.fromisoformat(text).strftime('%Y-%m-%d %H:%M %z').strip()
  except ValueError:
    return text


def provenance_html(report: Report) -> str:
  return '<ul class="provenance">' + ''.join(
      f'<li>{html.escape(line)}</li>' for line in provenance_lines(report)) + '</ul>'


def mean_curve(row: Row, key: str, transform: Callable[[float], float] = float):
  """(steps, mean, min, max, number of seeds) of a curve (a key of CURVES)
  over the row's seeds that have it, at the steps every one of them has
  reached; None without one."""
  curves = [{step: transform(v) for step, v in run.curves.get(key, [])}
            for run in row.runs]
  curves = [c for c in curves if c]
  if not curves:
    return None
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  columns = [[c[step] for c in curves] for step in steps]
  return (steps, [statistics.fmean(v) for v in columns], [min(v) for v in columns],
          [max(v) for v in columns], len(curves))


def _figures(report: Report) -> list[str]:
  """The figures' HTML, plotly.js embedded in the first; a line in place of
  the learning curves while no run has logged one."""
  curves = [f for f in (_curve_figure(report, 'train/loss', 'train loss'),
                        _curve_figure(report, 'eval/top1_error', 'eval top-1 error (%)'))
            if f is not None]
  figures = curves + [f for f in [_final_figure(report)] if f is not None]
  parts = [f'<div class="figure">{figure_html(f, i)}</div>' for i, f in enumerate(figures)]
  return parts if curves else ['<p>No learning curves yet.</p>', *parts]


def figure_html(figure, i: int) -> str:
  return figure.to_html(
      full_html=False, include_plotlyjs=i == 0, include_mathjax=False,
      div_id=f'figure-{i}', default_height=f'{figure.layout.height}px',
      config={'displaylogo': False, 'responsive': True})


PALETTE = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
           '#7f7f7f', '#bcbd22', '#17becf')


def _rgba(color: str, alpha: float) -> str:
  r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
  return f'rgba({r},{g},{b},{alpha})'


def _scale_buttons(default: str) -> list[dict]:
  """Linear / log buttons for the y axis: a row far above the others
  (60 % error beside 0.3 %) flattens them on a linear axis."""
  buttons = [dict(label=f'{t} y', method='relayout', args=[{'yaxis.type': t}])
             for t in ('linear', 'log')]
  return [dict(type='buttons', direction='right', buttons=buttons,
               active=0 if default == 'linear' else 1, showactive=True,
               x=1, xanchor='right', y=1.02, yanchor='bottom')]


def _axis_type(values: list[float]) -> str:
  """Log where every value is positive and they span more than a factor 10;
  linear otherwise (a log axis would hide a 0 % error)."""
  if not values or min(values) <= 0:
    return 'linear'
  return 'log' if max(values) > 10 * min(values) else 'linear'


def _layout(title: str, ytitle: str, values: list[float], **kw) -> dict:
  default = _axis_type(values)
  return dict(title=dict(text=title, x=0, y=0.97, yanchor='top'), height=460,
              template='plotly_white', yaxis=dict(title=ytitle, type=default),
              hovermode='closest', updatemenus=_scale_buttons(default),
              margin=dict(t=100, r=20), **kw)


def _curve_figure(report: Report, key: str, label: str):
  """`key` against step: per row the mean over seeds (thick), their min–max
  band and each seed (thin), one legend group per row; None without data."""
  import plotly.graph_objects as go
  figure, values = go.Figure(), []
  for i, row in enumerate(report.rows):
    curve = mean_curve(row, key)
    if not curve or not curve[0]:
      continue
    steps, mean, low, high, n = curve
    color, group = PALETTE[i % len(PALETTE)], f'row-{i}'
    name = row.name + (f' ({n} seeds)' if n > 1 else '')
    if n > 1:
      figure.add_scatter(x=steps + steps[::-1], y=high + low[::-1], fill='toself',
                         fillcolor=_rgba(color, 0.15), line=dict(width=0),
                         hoverinfo='skip', legendgroup=group, showlegend=False)
    for run in row.runs:
      points = run.curves.get(key) or []
      if n > 1 and points:
        values += [v for _, v in points]
        figure.add_scatter(
            x=[s for s, _ in points], y=[v for _, v in points], mode='lines',
            line=dict(color=color, width=0.8), opacity=0.6, legendgroup=group,
            showlegend=False, name=f'{row.name} seed {run.seed}',
            hovertemplate=f'{html.escape(row.name)}<br>seed {run.seed}<br>step %{{x}}'
                          f'<br>{label} %{{y:.4g}}<extra></extra>')
    values += mean
    which = (f'mean of {n} seeds' if n > 1 else
             f'seed {next(r.seed for r in row.runs if r.curves.get(key))}')
    figure.add_scatter(
        x=steps, y=mean, mode='lines+markers' if len(steps) < 30 else 'lines',
        line=dict(color=color, width=2.5), legendgroup=group, name=name,
        hovertemplate=f'{html.escape(row.name)}<br>{which}<br>step %{{x}}'
                      f'<br>{label} %{{y:.4g}}<extra></extra>')
  if not figure.data:
    return None
  figure.update_layout(**_layout(f'{label}<br><sup>mean over seeds (thick), min–max '
                                 f'band, each seed (thin); click a legend entry to hide '
                                 f'its row</sup>', label, values, xaxis=dict(title='step')))
  return figure


def _final_figure(report: Report):
  """Final top-1 error per row: mean ± std over seeds, each seed a dot. The
  paper's ImageNet figures stay in the table: this sweep's dataset is
  another, so they share no axis with it. None without results."""
  import plotly.graph_objects as go
  rows = [(i, row) for i, row in enumerate(report.rows) if row.values('top1_error')]
  if not rows:
    return None
  figure, values = go.Figure(), []
  for i, row in rows:
    color, errors = PALETTE[i % len(PALETTE)], row.values('top1_error')
    values += errors
    seeds = [run.seed for run in row.runs if run.finished and run.top1_error is not None
             and math.isfinite(run.top1_error)]            # those of `errors`
    figure.add_scatter(
        x=[i + 0.12] * len(errors), y=errors, mode='markers', showlegend=False,
        marker=dict(color=color, size=7, opacity=0.6, line=dict(width=1, color='white')),
        customdata=seeds, legendgroup=f'row-{i}',
        hovertemplate=f'{html.escape(row.name)}<br>seed %{{customdata}}<br>top-1 error '
                      f'%{{y:.3g}} %<extra></extra>')
    std = row.std('top1_error')
    figure.add_scatter(
        x=[i], y=[row.mean('top1_error')], mode='markers', name=row.name,
        marker=dict(color=color, size=16, symbol='line-ew-open', line=dict(width=3)),
        error_y=dict(type='data', array=[std or 0], visible=std is not None,
                     color=color, thickness=1.5, width=10),
        legendgroup=f'row-{i}', showlegend=False,
        hovertemplate=f'{html.escape(row.name)}<br>mean of {len(errors)} seed(s)'
                      f'<br>top-1 error %{{y:.3g}} %' +
                      (f' ± {std:.3g}' if std is not None else '') + '<extra></extra>')
  figure.update_layout(**_layout('final top-1 error (%)<br><sup>mean ± std over seeds '
                                 '(bar), each seed (dot)</sup>', 'top-1 error (%)', values,
                                 xaxis=dict(tickvals=[i for i, _ in rows],
                                            ticktext=[row.name for _, row in rows],
                                            range=[-0.5, len(report.rows) - 0.5])))
  return figure


def render(directory: str, fmt: str = 'text') -> str:
  """The report of `directory` as `fmt`; 'html' writes report.html and says where."""
  if fmt not in FORMATS:
    raise UserError(f'unknown report format {fmt!r}; choose one of {", ".join(FORMATS)}')
  report = collect(directory)
  if fmt == 'html':
    return f'wrote {write_html(report, directory)}'
  return {'text': format_text, 'markdown': format_markdown,
          'json': format_json}[fmt](report)
