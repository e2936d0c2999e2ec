"""Sweep reports: one table of runs beside the paper's figures, plus curves.

A sweep directory holds `sweep.json` (runs in order, paper figures, states)
and one run directory per run (`config.json`, `metrics.jsonl`, and
`result.json` once finished). Without `sweep.json`, every subdirectory with a
`config.json` or `result.json` is a run, sorted by name. A run the last sweep
found stale (run under another config than the sweep file's) keeps its
figures, with a note saying so.

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
from typing import Any, Callable

from inception_jax import rundir
from inception_jax.errors import UserError

FORMATS = ('text', 'markdown', 'json', 'html')
CURVES = ('train/loss', 'eval/top1')


@dataclasses.dataclass
class Row:
  """One run: our figures (None until it finishes), the paper's, its curves."""
  name: str
  state: str
  message: str = ''
  params: int | None = None
  gmacs: float | None = None
  image_size: int | None = None
  steps: int | None = None
  top1_error: float | None = None
  top5_error: float | None = None
  images_per_sec: float | None = None
  wall_time_sec: float | None = None
  paper: dict[str, Any] = dataclasses.field(default_factory=dict)
  curves: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)


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
  sweep = rundir.read_json(os.path.join(directory, 'sweep.json'))
  if sweep is None:
    runs, status = [{'name': n} for n in _discover(directory)], {}
    name = os.path.basename(os.path.abspath(directory))
  else:
    runs, status = sweep.get('runs', []), sweep.get('status', {})
    name = sweep.get('name') or os.path.basename(os.path.abspath(directory))
  if not runs:
    raise UserError(f'{directory} holds no runs: expected a sweep.json or run '
                    f'directories with config.json or result.json')
  rows = [_row(directory, run, status.get(run['name'], {})) for run in runs]
  return Report(name=name, directory=directory, rows=rows)


def _discover(directory: str) -> list[str]:
  return sorted(n for n in os.listdir(directory) if any(
      os.path.isfile(os.path.join(directory, n, f))
      for f in ('config.json', 'result.json')))


def _row(directory: str, run: dict, status: dict) -> Row:
  workdir = os.path.join(directory, run['name'])
  result = rundir.read_json(os.path.join(workdir, 'result.json'))
  row = Row(name=run['name'],
            state=status.get('state') or ('done' if result else 'unfinished'),
            message=status.get('message') or '',
            paper=dict(run.get('paper') or {}),
            curves=_curves(workdir))
  if result:
    metrics = result.get('metrics', {})
    row.params = result.get('params')
    row.gmacs = None if result.get('macs') is None else result['macs'] / 1e9
    row.image_size = result.get('image_size')
    row.steps = result.get('steps')
    row.top1_error = _error(metrics.get('eval/top1'))
    row.top5_error = _error(metrics.get('eval/top5'))
    row.images_per_sec = result.get('train_images_per_sec')
    row.wall_time_sec = result.get('wall_time_sec')
  return row


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


# (title, cell of a Row, paper-only column); 'run' and 'state' align left.
COLUMNS = [
    ('run', lambda r: r.name, False),
    ('params', lambda r: _num(',')(r.params), False),
    ('G mult-adds', lambda r: _num('.3f')(r.gmacs), False),
    ('paper Bn ops', lambda r: _num('g')(r.paper.get('cost_bn_ops')), True),
    ('image', lambda r: _num('d')(r.image_size), False),
    ('steps', lambda r: _num(',')(r.steps), False),
    ('top-1 err', lambda r: _num('.2f')(r.top1_error), False),
    ('paper top-1', lambda r: _num('g')(r.paper.get('top1_error')), True),
    ('top-5 err', lambda r: _num('.2f')(r.top5_error), False),
    ('paper top-5', lambda r: _num('g')(r.paper.get('top5_error')), True),
    ('img/s', lambda r: _num(',.1f')(r.images_per_sec), False),
    ('wall time', lambda r: _duration(r.wall_time_sec), False),
    ('state', lambda r: r.state, False),
]


LEFT = ('run', 'state')


def table(report: Report) -> tuple[list[str], list[list[str]]]:
  """The header and one row of cells per run; paper columns only if any."""
  columns = [c for c in COLUMNS if report.has_paper or not c[2]]
  return ([title for title, _, _ in columns],
          [[cell(row) for _, cell, _ in columns] for row in report.rows])


STALE = 'its figures are those of the old config; `sweep --rerun-stale` trains it again'


def _notes(report: Report) -> list[str]:
  return [f'{row.name}: {row.state}: {row.message}'
          + (f'; {STALE}' if row.state == 'stale' else '')
          for row in report.rows if row.message and row.state != 'done']


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
  """An aligned plain-text table (names left, figures right)."""
  header, rows = table(report)
  lines = [f'sweep {report.name} ({report.directory})', '', *aligned(header, rows)]
  notes = _notes(report)
  return '\n'.join(lines + ([''] + notes if notes else []))


def format_markdown(report: Report) -> str:
  """A GitHub table under a heading."""
  header, rows = table(report)
  line = lambda cells: '| ' + ' | '.join(c.replace('|', r'\|') for c in cells) + ' |'
  align = ['---' if title in LEFT else '---:' for title in header]
  lines = [f'### Sweep `{report.name}`', '', line(header), line(align),
           *map(line, rows)]
  notes = _notes(report)
  return '\n'.join(lines + ([''] + [f'- {n}' for n in notes] if notes else []))


def format_json(report: Report) -> str:
  """A JSON list of row dicts, without curves; NaN/inf become null."""
  rows = []
  for row in report.rows:
    d = dataclasses.asdict(row)
    d.pop('curves')
    rows.append({k: _finite(v) for k, v in d.items()})
  return json.dumps(rows, indent=2, allow_nan=False)


def _finite(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
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
  image = _curves_png(report)
  parts = [
      '<!DOCTYPE html>', '<html><head><meta charset="utf-8">',
      f'<title>{html.escape(report.name)}</title><style>{STYLE}</style></head><body>',
      f'<h1>Sweep {html.escape(report.name)}</h1>',
      f'<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>',
      f'<ul>{notes}</ul>' if notes else '',
      f'<img alt="learning curves" src="data:image/png;base64,{image}">' if image
      else '<p>No learning curves yet.</p>',
      '</body></html>', '']
  path = os.path.join(directory, 'report.html')
  try:
    rundir.write_text(path, '\n'.join(parts))
  except OSError as e:
    raise UserError(f'cannot write {path}: {e.strerror or e} (--format text, markdown '
                    f'or json print to the terminal instead)') from None
  return path


def _curves_png(report: Report) -> str | None:
  """Train loss and eval top-1 error against step, all runs; base64 PNG."""
  if not any(points for row in report.rows for points in row.curves.values()):
    return None
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(12, 4.5), layout='constrained')
  FigureCanvasAgg(figure)
  loss, error = figure.subplots(1, 2)
  for row in report.rows:
    _plot(loss, row.curves.get('train/loss', []), row.name, lambda v: v)
    _plot(error, row.curves.get('eval/top1', []), row.name, lambda v: 100 * (1 - v))
  for axes, title in ((loss, 'train loss'), (error, 'eval top-1 error (%)')):
    axes.set(title=title, xlabel='step')
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
      axes.legend(fontsize='small')
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  return base64.b64encode(buffer.getvalue()).decode('ascii')


def _plot(axes, points, label, transform) -> None:
  if points:
    steps, values = zip(*points)
    axes.plot(steps, [transform(v) for v in values], label=label,
              marker='.' if len(points) < 30 else None)


def render(directory: str, fmt: str = 'text') -> str:
  """The report of `directory` as `fmt`; 'html' writes report.html and says where."""
  if fmt not in FORMATS:
    raise UserError(f'unknown report format {fmt!r}; choose one of {", ".join(FORMATS)}')
  report = collect(directory)
  if fmt == 'html':
    return f'wrote {write_html(report, directory)}'
  return {'text': format_text, 'markdown': format_markdown,
          'json': format_json}[fmt](report)
