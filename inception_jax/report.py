"""Sweep reports: one table of runs beside the paper's figures, plus curves.

A sweep directory holds `sweep.json` (runs in order, their seeds, paper
figures, the state of each run directory) and one run directory per run,
DIR/NAME, or per seed of a run with seeds, DIR/NAME/seed_K (`config.json`,
`metrics.jsonl`, and `result.json` once finished). Without `sweep.json`,
every subdirectory with a `config.json` or `result.json` is a run, and every
one holding seed_K run directories a run with those seeds, sorted by name.

Each row is one run name: the mean ± standard deviation of its figures over
the seeds that finished, and the difference of its mean top-1 error to the
previous and to the first row, tested with Welch's t-test (two-sided,
p < 0.05) where both rows have two or more seeds. A run the last sweep found
stale (run under another config than the sweep file's) keeps its figures,
with a note saying so.

  report = collect('runs/table3')
  print(format_text(report))          # or format_markdown / format_json
  write_html(report, 'runs/table3')   # runs/table3/report.html
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
import statistics
import warnings
from typing import Any, Callable

from inception_jax import rundir
from inception_jax.errors import UserError

FORMATS = ('text', 'markdown', 'json', 'html')
CURVES = ('train/loss', 'eval/top1')
ALPHA = 0.05
# A row's state is the most serious of its seeds', in this order.
SEVERITY = ('failed', 'stale', 'interrupted', 'running', 'pending', 'unfinished', 'done')


@dataclasses.dataclass
class Seed:
  """One run directory of a row (DIR/NAME or DIR/NAME/seed_K): its figures
  (None until it finishes) and curves. `seed` is None where the config does
  not say (a run directory without config.json)."""
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
  images_per_sec: float | None = None
  wall_time_sec: float | None = None
  curves: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Difference:
  """Mean top-1 error of a row minus another's. `significant`: Welch's t-test
  gives p < ALPHA; None (with the reason in `note`) where it cannot be run."""
  delta: float
  p_value: float | None = None
  significant: bool | None = None
  note: str = ''


@dataclasses.dataclass
class Row:
  """One run name: its seeds, the paper's figures, and the comparison with
  the previous and the first row (None for the first row, or without results)."""
  name: str
  runs: list[Seed]
  paper: dict[str, Any] = dataclasses.field(default_factory=dict)
  vs_prev: Difference | None = None
  vs_first: Difference | None = None

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

  @property
  def has_paper(self) -> bool:
    return any(row.paper for row in self.rows)


# Collecting.

def collect(directory: str) -> Report:
  """Read a sweep directory into a `Report` (rows in sweep order)."""
  if not os.path.isdir(directory):
    raise UserError(f'no sweep directory {directory!r}')
  record = rundir.read_json(os.path.join(directory, 'sweep.json'))
  if record is None:
    runs, status = _discover(directory), {}
    name = os.path.basename(os.path.abspath(directory))
  else:
    runs, status = record.get('runs', []), record.get('status', {})
    name = record.get('name') or os.path.basename(os.path.abspath(directory))
  if not runs:
    raise UserError(f'{directory} holds no runs: expected a sweep.json or run '
                    f'directories with config.json or result.json')
  rows = [_row(directory, run, status) for run in runs]
  for i, row in enumerate(rows[1:], 1):
    row.vs_prev = difference(row, rows[i - 1])
    row.vs_first = difference(row, rows[0])
  return Report(name=name, directory=directory, rows=rows)


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
  workdir = os.path.join(directory, key)
  result = rundir.read_json(os.path.join(workdir, rundir.RESULT))
  if seed is None:
    seed = (rundir.read_json(os.path.join(workdir, rundir.CONFIG)) or {}).get('seed')
  run = Seed(seed=seed, directory=key,
             state=status.get('state') or ('done' if result else 'unfinished'),
             message=status.get('message') or '', curves=_curves(workdir))
  if result:
    metrics = result.get('metrics', {})
    run.finished = True
    run.params = result.get('params')
    run.gmacs = None if result.get('macs') is None else result['macs'] / 1e9
    run.image_size = result.get('image_size')
    run.steps = result.get('steps')
    run.top1_error = _error(metrics.get('eval/top1'))
    run.top5_error = _error(metrics.get('eval/top5'))
    run.images_per_sec = result.get('train_images_per_sec')
    run.wall_time_sec = result.get('wall_time_sec')
  return run


def _error(accuracy: float | None) -> float | None:
  """Accuracy in [0, 1] → error in %."""
  return None if accuracy is None else round(100 * (1 - accuracy), 4)


def _curves(workdir: str) -> dict[str, list[tuple[int, float]]]:
  curves = {key: [] for key in CURVES}
  for line in rundir.read_metrics(workdir):   # skips a line cut short by a kill
    for key in CURVES:
      if isinstance(line.get(key), (int, float)):
        curves[key].append((int(line['step']), float(line[key])))
  return curves


# Spread and significance.

def difference(row: Row, other: Row, key: str = 'top1_error') -> Difference | None:
  """Mean `key` of `row` minus `other`'s, with Welch's t-test (two-sided)
  where each has two or more seeds; None unless both have results."""
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


def _duration(seconds: float | None) -> str:
  if seconds is None or not math.isfinite(seconds):
    return ''
  if seconds < 60:
    return f'{seconds:.1f}s'
  minutes, secs = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f'{minutes}m{secs:02d}s'
  return f'{minutes // 60}h{minutes % 60:02d}m'


def _spread(row: Row, key: str, count: bool = False) -> str:
  """'24.00 ± 0.50' over the seeds (no ± with one seed), '(n)' with `count`."""
  mean, std = row.mean(key), row.std(key)
  if mean is None:
    return ''
  text = f'{mean:.2f}' + ('' if std is None else f' ± {std:.2f}')
  return text + (f' ({len(row.values(key))})' if count else '')


def _delta(d: Difference | None) -> str:
  """'-0.80*' beyond the noise, '-0.80' within it, '-0.80 n/a (1 seed)' untested."""
  if d is None:
    return ''
  return f'{d.delta:+.2f}' + ('*' if d.significant else f' {d.note}' if d.note else '')


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
    ('wall time', lambda r: _duration(r.mean('wall_time_sec')), False),
    ('state', lambda r: r.state_text, False),
]


LEFT = ('run', 'state')

FOOTER = (
    'top-1 / top-5 err: mean ± standard deviation (n − 1) over the seeds that '
    'finished, (n) how many; img/s and wall time: mean per seed.',
    f'Δ prev / Δ first: mean top-1 error minus the previous / first row\'s; * exceeds '
    f'the noise (Welch\'s t-test over seeds, two-sided p < {ALPHA:g}); unmarked: within '
    f'it; n/a (1 seed): one seed on either side, no test possible.')


def table(report: Report) -> tuple[list[str], list[list[str]]]:
  """The header and one row of cells per run; paper columns only if any."""
  columns = [c for c in COLUMNS if report.has_paper or not c[2]]
  return ([title for title, _, _ in columns],
          [[cell(row) for _, cell, _ in columns] for row in report.rows])


STALE = 'its figures are those of the old config; `sweep --rerun-stale` trains it again'


def _notes(report: Report) -> list[str]:
  """A line for each run directory whose state has a message, but 'done'."""
  return [f'{run.directory}: {run.state}: {run.message}' + (
              '' if run.state != 'stale' else f'; {STALE}' if run.finished
              else '; `sweep --rerun-stale` trains it again')
          for row in report.rows for run in row.runs
          if run.message and run.state != 'done']


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
  """An aligned plain-text table (names left, figures right), its footer and notes."""
  header, rows = table(report)
  lines = [f'sweep {report.name} ({report.directory})', '', *aligned(header, rows),
           '', *FOOTER]
  notes = _notes(report)
  return '\n'.join(lines + ([''] + notes if notes else []))


def format_markdown(report: Report) -> str:
  """A GitHub table under a heading, its footer and notes."""
  header, rows = table(report)
  line = lambda cells: '| ' + ' | '.join(
      c.replace('|', r'\|').replace('*', r'\*') for c in cells) + ' |'
  align = ['---' if title in LEFT else '---:' for title in header]
  lines = [f'### Sweep `{report.name}`', '', line(header), line(align), *map(line, rows)]
  lines += [part for f in FOOTER for part in ('', f.replace('*', r'\*'))]
  notes = _notes(report)
  return '\n'.join(lines + ([''] + [f'- {n}' for n in notes] if notes else []))


def format_json(report: Report) -> str:
  """A JSON list, one dict per row (per-seed figures under `per_seed`, no
  curves); NaN/inf become null."""
  return json.dumps([_finite(_row_dict(row)) for row in report.rows], indent=2,
                    allow_nan=False)


def _row_dict(row: Row) -> dict:
  difference = lambda d: None if d is None else dataclasses.asdict(d)
  return {
      'name': row.name, 'state': row.state, 'seeds': row.seeds,
      'top1_error_mean': row.mean('top1_error'), 'top1_error_std': row.std('top1_error'),
      'top5_error_mean': row.mean('top5_error'), 'top5_error_std': row.std('top5_error'),
      'top1_delta_prev': difference(row.vs_prev),
      'top1_delta_first': difference(row.vs_first),
      'params': row.common('params'), 'gmacs': row.common('gmacs'),
      'image_size': row.common('image_size'), 'steps': row.common('steps'),
      'images_per_sec': row.mean('images_per_sec'),
      'wall_time_sec': row.mean('wall_time_sec'), 'paper': row.paper,
      'per_seed': [{k: v for k, v in dataclasses.asdict(run).items() if k != 'curves'}
                   for run in row.runs],
  }


def _finite(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_finite(v) for v in x]
  return x


# HTML.

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child, th:last-child, td:last-child { text-align: left; }
th { background: #f4f4f4; }
th.paper, td.paper { color: #777; }
tr.failed td { background: #fdecea; }
tr.stale td { background: #fff4d6; color: #777; }
p.footer { color: #555; font-size: 0.9em; max-width: 60em; }
img { max-width: 100%; margin-top: 1.5em; }
"""


def write_html(report: Report, directory: str) -> str:
  """Write `directory/report.html` (self-contained); returns its path."""
  header, rows = table(report)
  paper = ['paper' if title.startswith('paper') else '' for title in header]
  cell = lambda tag, text, cls: (f'<{tag} class="{cls}">' if cls else f'<{tag}>') + \
      f'{html.escape(text)}</{tag}>'
  head = ''.join(cell('th', t, c) for t, c in zip(header, paper))
  body = '\n'.join(
      f'<tr class="{html.escape(row.state)}">' +
      ''.join(cell('td', t, c) for t, c in zip(cells, paper)) + '</tr>'
      for row, cells in zip(report.rows, rows))
  notes = ''.join(f'<li>{html.escape(n)}</li>' for n in _notes(report))
  footer = ''.join(f'<p class="footer">{html.escape(f)}</p>' for f in FOOTER)
  curves, bars = _curves_png(report), _bars_png(report)
  parts = [
      '<!DOCTYPE html>', '<html><head><meta charset="utf-8">',
      f'<title>{html.escape(report.name)}</title><style>{STYLE}</style></head><body>',
      f'<h1>Sweep {html.escape(report.name)}</h1>',
      f'<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>',
      footer, f'<ul>{notes}</ul>' if notes else '',
      f'<img alt="learning curves" src="data:image/png;base64,{curves}">' if curves
      else '<p>No learning curves yet.</p>',
      f'<img alt="final top-1 error" src="data:image/png;base64,{bars}">' if bars
      else '',
      '</body></html>', '']
  path = os.path.join(directory, 'report.html')
  try:
    rundir.write_text(path, '\n'.join(parts))
  except OSError as e:
    raise UserError(f'cannot write {path}: {e.strerror or e} (--format text, markdown '
                    f'or json print to the terminal instead)') from None
  return path


def _figure(size):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=size, layout='constrained')
  FigureCanvasAgg(figure)
  return figure


def _png(figure) -> str:
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  return base64.b64encode(buffer.getvalue()).decode('ascii')


def _curves_png(report: Report) -> str | None:
  """Train loss and eval top-1 error against step, each row's mean over its
  seeds with their min–max band; base64 PNG."""
  if not any(points for row in report.rows for run in row.runs
             for points in run.curves.values()):
    return None
  figure = _figure((12, 4.5))
  loss, error = figure.subplots(1, 2)
  for row in report.rows:
    _plot(loss, mean_curve(row, 'train/loss'), row)
    _plot(error, mean_curve(row, 'eval/top1', lambda v: 100 * (1 - v)), row)
  for axes, title in ((loss, 'train loss'), (error, 'eval top-1 error (%)')):
    axes.set(title=title + ' (mean, min–max over seeds)', xlabel='step')
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
      axes.legend(fontsize='small')
  return _png(figure)


def mean_curve(row: Row, key: str, transform: Callable[[float], float] = float):
  """(steps, mean, min, max, number of seeds) of a curve over the row's seeds
  that have it, at the steps every one of them has reached; None without one."""
  curves = [{step: transform(v) for step, v in run.curves.get(key, [])}
            for run in row.runs]
  curves = [c for c in curves if c]
  if not curves:
    return None
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  columns = [[c[step] for c in curves] for step in steps]
  return (steps, [statistics.fmean(v) for v in columns], [min(v) for v in columns],
          [max(v) for v in columns], len(curves))


def _plot(axes, curve, row: Row) -> None:
  if not curve or not curve[0]:
    return
  steps, mean, low, high, n = curve
  label = row.name + (f' ({n} seeds)' if n > 1 else '')
  line, = axes.plot(steps, mean, label=label, marker='.' if len(steps) < 30 else None)
  if n > 1:
    axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def _bars_png(report: Report) -> str | None:
  """Final top-1 error per row: our mean with ± one standard deviation and
  each seed as a dot, beside the paper's figure where the sweep gives it."""
  rows = [row for row in report.rows
          if row.values('top1_error') or row.paper.get('top1_error') is not None]
  if not any(row.values('top1_error') for row in rows):
    return None
  nan = lambda x: math.nan if x is None else x
  paper = [row.paper.get('top1_error') for row in rows]
  width = 0.4 if any(p is not None for p in paper) else 0.6
  figure = _figure((max(6, 1.4 * len(rows) + 2), 4.5))
  axes = figure.subplots()
  x = range(len(rows))
  ours = [i - width / 2 if width < 0.5 else i for i in x]
  axes.bar(ours, [nan(row.mean('top1_error')) for row in rows], width,
           yerr=[nan(row.std('top1_error')) for row in rows], capsize=4, label='ours')
  for i, row in zip(ours, rows):
    values = row.values('top1_error')
    axes.plot([i] * len(values), values, 'k.', markersize=4)
  if width < 0.5:
    axes.bar([i + width / 2 for i in x], list(map(nan, paper)), width,
             color='#bbb', label='paper')
    axes.legend(fontsize='small')
  axes.set_xticks(list(x), [row.name for row in rows], rotation=20, ha='right')
  axes.set(title='final top-1 error (%): mean ± std over seeds, dots: seeds',
           ylabel='top-1 error (%)')
  axes.grid(alpha=0.3, axis='y')
  return _png(figure)


def render(directory: str, fmt: str = 'text') -> str:
  """The report of `directory` as `fmt`; 'html' writes report.html and says where."""
  if fmt not in FORMATS:
    raise UserError(f'unknown report format {fmt!r}; choose one of {", ".join(FORMATS)}')
  report = collect(directory)
  if fmt == 'html':
    return f'wrote {write_html(report, directory)}'
  return {'text': format_text, 'markdown': format_markdown,
          'json': format_json}[fmt](report)
