"""Sweep reports from fake sweep directories (nothing is trained here)."""

from __future__ import annotations

import html.parser
import importlib.util
import json
import math
import os
import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

from inception_jax import report
from inception_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'report_browser', os.path.join(ROOT, 'scripts', 'report_browser.py'))
report_browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report_browser)


def external_loads(page):
  """The src / href attributes of the page's tags that name another resource
  than the page itself (a fragment, a data: URL): what a browser would fetch."""
  found = []

  class Parser(html.parser.HTMLParser):
    def handle_starttag(self, tag, attrs):
      found.extend(v for k, v in attrs if k in ('src', 'href') and v and
                   not v.startswith(('#', 'data:')))

  Parser().feed(page)
  return found

PAPER = {
    'inception_v2': dict(top1_error=23.4, top5_error=None, cost_bn_ops=3.8),
    'v2_rmsprop': dict(top1_error=23.1, top5_error=6.3, cost_bn_ops=3.8),
    'inception_v3': dict(top1_error=21.2, top5_error=5.6, cost_bn_ops=4.8),
}


def write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(obj, f)


def fake_run(directory, name, top1=None, top5=0.9, steps=20, curves=True, seed=None,
             offset=0.0):
  """A run directory; with `top1` also a result.json (a finished run). Its
  train loss is 7 - step / 10 + `offset`."""
  workdir = os.path.join(directory, name)
  write(os.path.join(workdir, 'config.json'), {'batch_size': 8, 'seed': seed})
  if curves:
    lines = [{'step': s, 'train/loss': 7.0 - s / 10 + offset, 'train/top1': 0.1,
              'train/lr': 0.045} for s in range(1, steps + 1)]
    lines += [{'step': s, 'eval/top1': 0.5 + s / 100, 'eval/loss': 2.0,
               'eval_raw/top1': 0.5} for s in (10, 20)]
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      f.writelines(json.dumps(line) + '\n' for line in lines)
  if top1 is not None:
    write(os.path.join(workdir, 'result.json'), {
        'metrics': {'eval/top1': top1, 'eval/top5': top5, 'eval/loss': 1.5,
                    'eval_raw/top1': top1, 'eval_raw/top5': top5,
                    'eval_raw/loss': 1.6, 'train/loss': 2.0},
        'steps': steps, 'epochs': 1.0, 'batch_size': 8, 'image_size': 299,
        'params': 23_834_568, 'macs': 5_713_000_000,
        'train_images_per_sec': 123.4, 'wall_time_sec': 3725.0,
        'devices': 8, 'processes': 1, 'resumed_from_step': 0})


@pytest.fixture
def table3(tmp_path):
  """A table3-like sweep: two finished runs and one failed, in sweep order."""
  directory = str(tmp_path / 'table3')
  fake_run(directory, 'inception_v2', top1=0.76, top5=0.93)
  fake_run(directory, 'v2_rmsprop')                       # failed: no result.json
  with open(os.path.join(directory, 'v2_rmsprop', 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 21, "train/lo')                      # cut short by a kill
  fake_run(directory, 'inception_v3', top1=0.8, top5=0.95)
  names = ['inception_v2', 'v2_rmsprop', 'inception_v3']  # not alphabetical
  write(os.path.join(directory, 'sweep.json'), {
      'sweep': 'sweeps/table3_ablation.py:scale=demo', 'name': 'table3_ablation',
      'runs': [{'name': n, 'config': 'configs/inception_v3.py', 'overrides': {},
                'paper': PAPER[n]} for n in names],
      'status': {'inception_v2': {'state': 'done', 'message': '', 'exit_code': 0},
                 'v2_rmsprop': {'state': 'failed', 'message': 'loss is NaN at step 21',
                                'exit_code': 1},
                 'inception_v3': {'state': 'done', 'message': '', 'exit_code': 0}}})
  return directory


def test_collect_rows_in_sweep_order_with_errors_in_percent(table3):
  r = report.collect(table3)
  assert r.name == 'table3_ablation'
  assert [row.name for row in r.rows] == ['inception_v2', 'v2_rmsprop', 'inception_v3']
  v2 = r.rows[0]
  assert v2.state == 'done'
  assert v2.mean('top1_error') == pytest.approx(24.0)
  assert v2.mean('top5_error') == pytest.approx(7.0)
  assert v2.common('params') == 23_834_568
  assert v2.common('gmacs') == pytest.approx(5.713)
  assert (v2.common('image_size'), v2.common('steps')) == (299, 20)
  assert v2.paper['top1_error'] == 23.4
  assert r.rows[2].mean('top1_error') == pytest.approx(20.0)
  assert len(v2.runs[0].curves['train/loss']) == 20
  # Old runs logged accuracy fractions (eval/top1 0.6, 0.7): read as error in %.
  steps, errors = zip(*v2.runs[0].curves['eval/top1_error'])
  assert steps == (10, 20) and errors == pytest.approx((40.0, 30.0))


def test_failed_run_has_its_state_and_blank_figures(table3):
  failed = report.collect(table3).rows[1]
  assert failed.state == 'failed'
  assert failed.runs[0].message == 'loss is NaN at step 21'
  assert failed.mean('top1_error') is None and failed.common('params') is None
  assert len(failed.runs[0].curves['train/loss']) == 20   # the cut line is skipped
  line = next(l for l in report.format_text(report.collect(table3)).splitlines()
              if l.startswith('v2_rmsprop'))
  assert line.split() == ['v2_rmsprop', '3.8', '23.1', '6.3', 'failed']  # paper only


def test_text_table_has_paper_columns_and_aligned_lines(table3):
  text = report.format_text(report.collect(table3))
  lines = text.splitlines()
  header = next(l for l in lines if l.startswith('run'))
  for title in ('params', 'G mult-adds', 'top-1 err', 'top-5 err', 'img/s',
                'wall time', 'state', 'paper top-1', 'paper top-5', 'paper Bn ops'):
    assert title in header
  v2 = next(l for l in lines if l.startswith('inception_v2'))
  assert '24.00 (1)' in v2 and '23,834,568' in v2 and '5.713' in v2 and '1h02m' in v2
  end = lambda line, cell: line.index(cell) + len(cell)
  assert end(v2, '24.00 (1)') == end(header, 'top-1 err')   # figures align right
  assert v2.rindex('done') == header.rindex('state')     # state aligns left
  assert 'v2_rmsprop: failed: loss is NaN at step 21' in text


def test_no_paper_columns_without_paper_figures(tmp_path):
  directory = str(tmp_path / 'plain')
  fake_run(directory, 'b', top1=0.5)
  fake_run(directory, 'a', top1=0.6)
  write(os.path.join(directory, 'sweep.json'), {
      'name': 'plain', 'runs': [{'name': 'b', 'config': 'x.py'},
                                {'name': 'a', 'config': 'x.py', 'paper': {}}]})
  r = report.collect(directory)
  assert [row.name for row in r.rows] == ['b', 'a']
  for text in (report.format_text(r), report.format_markdown(r)):
    header = next(l for l in text.splitlines() if 'top-1 err' in l)
    assert 'paper' not in header


def test_markdown_table(table3):
  md = report.format_markdown(report.collect(table3))
  lines = [l for l in md.splitlines() if l.startswith('|')]
  assert len(lines) == 2 + 3                             # header, separator, runs
  assert set(lines[1].replace('|', '').replace(' ', '')) <= set('-:')
  assert lines[0].count('|') == lines[1].count('|') == lines[2].count('|')
  assert 'paper top-1' in lines[0]
  assert [l.split('|')[1].strip() for l in lines[2:]] == [
      'inception_v2', 'v2_rmsprop', 'inception_v3']


def test_json_round_trips(table3):
  rows = json.loads(report.format_json(report.collect(table3)))
  assert [row['name'] for row in rows] == ['inception_v2', 'v2_rmsprop', 'inception_v3']
  assert rows[0]['top1_error_mean'] == pytest.approx(24.0)
  assert rows[0]['top5_error_mean'] == pytest.approx(7.0)
  assert rows[0]['params'] == 23_834_568
  assert rows[0]['paper'] == PAPER['inception_v2']
  assert rows[1]['state'] == 'failed' and rows[1]['top1_error_mean'] is None
  assert rows[1]['per_seed'][0]['message'] == 'loss is NaN at step 21'


def test_json_writes_nan_as_null(tmp_path):
  directory = str(tmp_path / 'nan')
  fake_run(directory, 'a', top1=float('nan'))
  rows = json.loads(report.format_json(report.collect(directory)))
  assert rows[0]['top1_error_mean'] is None
  assert rows[0]['per_seed'][0]['top1_error'] is None


def test_html(table3):
  path = report.write_html(report.collect(table3), table3)
  assert path == os.path.join(table3, 'report.html')
  page = open(path).read()
  assert '<table>' in page and '</table>' in page
  for name in ('inception_v2', 'v2_rmsprop', 'inception_v3', 'paper top-1'):
    assert name in page
  assert 'Plotly.newPlot' in page and '<img' not in page
  assert '<link' not in page and not external_loads(page)  # self-contained


def test_html_that_cannot_be_written_is_one_line(table3, cli_main):
  os.mkdir(os.path.join(table3, 'report.html'))      # in the way: not a file
  code, out, err = cli_main('compare', table3, '--format', 'html')
  assert (code, out) == (2, '')
  assert err.startswith(f'error: cannot write {table3}/report.html: Is a directory')
  assert err.count('\n') == 1
  assert not os.path.exists(os.path.join(table3, 'report.html.tmp'))


def test_a_stale_row_says_its_figures_are_the_old_configs(table3):
  path = os.path.join(table3, 'sweep.json')
  sweep = json.load(open(path))
  sweep['status']['inception_v3'] = {'state': 'stale', 'message': 'finished with '
                                     'a different config (seed: 0 -> 1)'}
  write(path, sweep)
  text = report.render(table3)
  row = [l for l in text.splitlines() if l.startswith('inception_v3 ')][0]
  assert row.split()[-1] == 'stale'
  assert ('inception_v3: stale: finished with a different config (seed: 0 -> 1); '
          'its figures are those of the old config; `sweep --rerun-stale` trains '
          'it again') in text
  page = open(report.write_html(report.collect(table3), table3)).read()
  assert '<tr class="stale">' in page and 'tr.stale td' in page


def test_render(table3):
  assert report.render(table3, 'text') == report.format_text(report.collect(table3))
  line = report.render(table3, 'html')
  assert os.path.join(table3, 'report.html') in line
  assert os.path.exists(os.path.join(table3, 'report.html'))
  with pytest.raises(UserError, match='unknown report format'):
    report.render(table3, 'pdf')


def test_without_sweep_json(tmp_path):
  directory = str(tmp_path / 'loose')
  fake_run(directory, 'zeta', top1=0.7)
  fake_run(directory, 'alpha')                           # unfinished
  os.makedirs(os.path.join(directory, 'not_a_run'))
  r = report.collect(directory)
  assert r.name == 'loose'
  assert [(row.name, row.state) for row in r.rows] == [('alpha', 'unfinished'),
                                                      ('zeta', 'done')]
  assert r.rows[1].mean('top1_error') == pytest.approx(30.0)
  assert 'paper' not in report.format_markdown(r).split('\n')[2]
  assert 'Plotly.newPlot' in open(report.write_html(r, directory)).read()


def test_html_without_curves(tmp_path):
  directory = str(tmp_path / 'nocurves')
  fake_run(directory, 'a', top1=0.7, curves=False)
  page = open(report.write_html(report.collect(directory), directory)).read()
  assert '<table>' in page and 'No learning curves yet' in page


def test_missing_or_empty_directory(tmp_path):
  with pytest.raises(UserError, match='no sweep directory'):
    report.collect(str(tmp_path / 'missing'))
  os.makedirs(tmp_path / 'empty' / 'stray')
  with pytest.raises(UserError, match='holds no runs'):
    report.collect(str(tmp_path / 'empty'))


def test_bad_sweep_json(tmp_path):
  (tmp_path / 'sweep.json').write_text('{"runs": [')
  with pytest.raises(UserError, match='not valid JSON'):
    report.collect(str(tmp_path))


# Seeds: rows aggregate DIR/NAME/seed_K run directories.

# Top-1 / top-5 error (%) of each finished seed; 'partial' has a third, failed seed.
SEEDED = {
    'base': ([30.0, 31.5, 29.0], [10.0, 11.0, 9.5]),
    'better': ([24.0, 25.0, 23.5], [7.0, 7.5, 6.0]),
    'same': ([24.5, 23.0], [7.5, 6.5]),
    'partial': ([28.0, 26.0], [8.0, 9.0]),
}


@pytest.fixture
def seeded(tmp_path):
  """Four runs with seeds (one seed of 'partial' failed), then a single-seed
  run in the flat layout, with the per-seed figures of SEEDED."""
  directory = str(tmp_path / 'seeded')
  runs, status = [], {}
  for name, (top1, top5) in SEEDED.items():
    seeds = [0, 1, 2] if name != 'same' else [0, 1]
    runs.append({'name': name, 'config': 'x.py', 'seeds': seeds})
    for k, (e1, e5) in enumerate(zip(top1, top5)):
      fake_run(directory, f'{name}/seed_{k}', top1=1 - e1 / 100, top5=1 - e5 / 100,
               seed=k, offset=0.5 * k, steps=20 - 5 * k)
      status[f'{name}/seed_{k}'] = {'state': 'done', 'message': 'finished earlier'}
  fake_run(directory, 'partial/seed_2', seed=2)
  status['partial/seed_2'] = {'state': 'failed', 'message': 'loss is NaN at step 3'}
  fake_run(directory, 'single', top1=0.78, top5=0.93, seed=5)
  runs.append({'name': 'single', 'config': 'x.py'})
  status['single'] = {'state': 'done'}
  write(os.path.join(directory, 'sweep.json'),
        {'name': 'seeded', 'runs': runs, 'status': status})
  return directory


def welch_p(a, b):
  """Welch's two-sided p-value from its closed form (Welch–Satterthwaite df)."""
  a, b = np.asarray(a), np.asarray(b)
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  t = (a.mean() - b.mean()) / np.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return 2 * scipy_stats.t.sf(abs(t), df)


def test_mean_std_and_significance_match_a_direct_computation(seeded):
  rows = report.collect(seeded).rows
  top1 = [SEEDED[n][0] for n in SEEDED] + [[22.0]]
  assert [row.name for row in rows] == [*SEEDED, 'single']
  assert [row.seeds for row in rows] == [3, 3, 2, 2, 1]
  for row, values, top5 in zip(rows, top1, [v[1] for v in SEEDED.values()] + [[7.0]]):
    assert row.mean('top1_error') == pytest.approx(np.mean(values))
    assert row.mean('top5_error') == pytest.approx(np.mean(top5))
    if len(values) > 1:
      assert row.std('top1_error') == pytest.approx(np.std(values, ddof=1))
      assert row.std('top5_error') == pytest.approx(np.std(top5, ddof=1))
    else:
      assert row.std('top1_error') is None
  assert rows[0].vs_prev is None and rows[0].vs_first is None
  marks = []
  for i, row in enumerate(rows[1:], 1):
    for diff, other in ((row.vs_prev, top1[i - 1]), (row.vs_first, top1[0])):
      assert diff.delta == pytest.approx(np.mean(top1[i]) - np.mean(other))
      if min(len(top1[i]), len(other)) < 2:
        assert (diff.p_value, diff.significant, diff.note) == (None, None, 'n/a (1 seed)')
      else:
        p = welch_p(top1[i], other)
        assert diff.p_value == pytest.approx(p, rel=1e-6)
        assert diff.significant == (p < 0.05) and diff.note == ''
    marks.append((row.vs_prev.significant, row.vs_first.significant))
  # The fixture exercises each outcome: beyond the noise, within it, untestable.
  assert marks == [(True, True), (False, True), (False, False), (None, None)]


def test_no_spread_on_either_side_is_not_tested():
  run = lambda error: report.Seed(0, 'x', 'done', finished=True, top1_error=error)
  a = report.Row('a', [run(20.0), run(20.0)])
  b = report.Row('b', [run(25.0), run(25.0)])
  d = report.difference(b, a)
  assert (d.delta, d.significant, d.note) == (5.0, None, 'n/a (no spread)')


def test_no_spread_on_one_side_is_tested_without_a_warning():
  """The demo's rows that end at 0.2% on both seeds: Welch's test against a
  row with spread, as scipy computes it, and no RuntimeWarning on stderr."""
  from scipy import stats
  run = lambda error: report.Seed(0, 'x', 'done', finished=True, top1_error=error)
  a = report.Row('a', [run(12.4), run(19.2)])
  b = report.Row('b', [run(0.2), run(0.2)])
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    d = report.difference(b, a)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    p = stats.ttest_ind([0.2, 0.2], [12.4, 19.2], equal_var=False).pvalue
  assert d.delta == pytest.approx(-15.6) and d.p_value == pytest.approx(p)
  assert d.significant == (p < 0.05) and d.note == ''


def test_json_gives_each_rows_spread_and_per_seed_values(seeded, cli_main):
  code, out, _ = cli_main('compare', seeded, '--format', 'json')
  assert code == 0
  rows = {row['name']: row for row in json.loads(out)}
  for name, (top1, top5) in SEEDED.items():
    row = rows[name]
    assert row['seeds'] == len(top1)
    assert row['top1_error_mean'] == pytest.approx(np.mean(top1))
    assert row['top1_error_std'] == pytest.approx(np.std(top1, ddof=1))
    assert row['top5_error_mean'] == pytest.approx(np.mean(top5))
    assert row['top5_error_std'] == pytest.approx(np.std(top5, ddof=1))
    finished = [s for s in row['per_seed'] if s['finished']]
    assert [s['top1_error'] for s in finished] == pytest.approx(top1)
    assert [s['top5_error'] for s in finished] == pytest.approx(top5)
    assert [s['directory'] for s in finished] == [f'{name}/seed_{k}'
                                                  for k in range(len(top1))]
  assert rows['base']['state'] == 'done'
  partial = rows['partial']
  assert partial['state'] == 'failed'
  assert [(s['seed'], s['state']) for s in partial['per_seed']] == [
      (0, 'done'), (1, 'done'), (2, 'failed')]
  better = rows['better']['top1_delta_prev']
  assert better['delta'] == pytest.approx(np.mean(SEEDED['better'][0]) -
                                          np.mean(SEEDED['base'][0]))
  assert better['p_value'] == pytest.approx(welch_p(SEEDED['better'][0],
                                                    SEEDED['base'][0]))
  assert better['significant'] is True
  single = rows['single']
  assert (single['seeds'], single['top1_error_mean'], single['top1_error_std']) == (
      1, pytest.approx(22.0), None)
  assert single['per_seed'][0]['seed'] == 5
  assert single['top1_delta_first']['note'] == 'n/a (1 seed)'


def test_text_and_markdown_show_spread_deltas_and_the_rule(seeded):
  r = report.collect(seeded)
  text = report.format_text(r)
  line = lambda name: next(l for l in text.splitlines() if l.startswith(name + ' '))
  base, better = SEEDED['base'][0], SEEDED['better'][0]
  cell = f'{np.mean(better):.2f} ± {np.std(better, ddof=1):.2f} (3)'
  assert cell in line('better')
  assert f'{np.mean(better) - np.mean(base):+.2f}*' in line('better')
  same = f'{np.mean(SEEDED["same"][0]) - np.mean(better):+.2f}'
  assert f' {same} ' in line('same') and f'{same}*' not in line('same')
  assert line('single').count('n/a (1 seed)') == 2
  assert '22.00 (1)' in line('single')
  assert line('partial').endswith('2 done, 1 failed')
  assert ("p-value of Welch's t-test over seeds (two-sided); * exceeds the noise "
          "(p < 0.05)") in text
  assert 'partial/seed_2: failed: loss is NaN at step 3' in text
  header = next(l for l in text.splitlines() if l.startswith('run'))
  assert 'Δ prev' in header and 'Δ first' in header
  md = report.format_markdown(r)
  row = next(l for l in md.splitlines() if l.startswith('| better |'))
  assert f'{np.mean(better) - np.mean(base):+.2f}\\*' in row and cell in row
  assert "Welch's t-test" in md


def test_mean_curve_is_the_mean_and_range_over_seeds(seeded):
  base = report.collect(seeded).rows[0]
  steps, mean, low, high, n = report.mean_curve(base, 'train/loss')
  assert n == 3 and steps == list(range(1, 11))          # seeds reach 20, 15, 10 steps
  losses = np.array([[7.0 - s / 10 + 0.5 * k for s in steps] for k in range(3)])
  np.testing.assert_allclose(mean, losses.mean(0))
  np.testing.assert_allclose(low, losses.min(0))
  np.testing.assert_allclose(high, losses.max(0))


def test_html_has_curves_bars_and_the_rule(seeded):
  page = open(report.write_html(report.collect(seeded), seeded)).read()
  assert page.count('class="plotly-graph-div"') == 3     # loss, error, final error
  for title in (r'"train loss\u003cbr\u003e\u003csup\u003emean over seeds',   # <br><sup>
                r'"eval top-1 error (%)\u003cbr\u003e',
                r'"final top-1 error (%)\u003cbr\u003e'):
    assert title in page
  assert "Welch&#x27;s t-test" in page
  assert '<tr class="failed">' in page                  # a failed seed marks its row


def test_seed_directories_without_sweep_json(tmp_path):
  directory = str(tmp_path / 'loose')
  for k, top1 in ((0, 0.7), (3, 0.6)):
    fake_run(directory, f'a/seed_{k}', top1=top1, seed=k)
  fake_run(directory, 'b', top1=0.5)
  os.makedirs(os.path.join(directory, 'a', 'seed_x'))
  r = report.collect(directory)
  assert [(row.name, [s.directory for s in row.runs]) for row in r.rows] == [
      ('a', ['a/seed_0', 'a/seed_3']), ('b', ['b'])]
  assert r.rows[0].mean('top1_error') == pytest.approx(35.0)
  assert r.rows[0].std('top1_error') == pytest.approx(np.std([30, 40], ddof=1))


def test_sweep_directories_written_before_seeds_still_read(table3):
  """The flat layout (DIR/NAME/result.json, no seeds in sweep.json) is one
  seed a row: its figures, no spread, no test."""
  rows = json.loads(report.format_json(report.collect(table3)))
  v2, v3 = rows[0], rows[2]
  assert (v2['seeds'], v2['top1_error_mean'], v2['top1_error_std']) == (
      1, pytest.approx(24.0), None)
  assert [s['directory'] for s in v2['per_seed']] == ['inception_v2']
  assert v3['top1_delta_first'] == {'delta': pytest.approx(-4.0), 'p_value': None,
                                    'significant': None, 'note': 'n/a (1 seed)'}
  assert v3['top1_delta_prev'] is None                  # the row above has no result


# The demo's shape: eval every 100 of 1000 steps, the new metric convention
# (error in %), provenance, and rows 2–5 at the ceiling.

# name: (config change, final top-1 error % per seed, final eval loss per seed,
# steps over which each seed's error decays)
DEMO = {
    'inception_v2': ({}, [7.9, 13.6], [0.30, 0.45], [300, 400]),
    'v2_rmsprop': ({'optim': {'name': 'rmsprop'}}, [0.2, 0.3], [0.020, 0.024], [150, 200]),
    'label_smoothing': ({'loss': {'label_smoothing': 0.1}}, [0.1, 0.2], [0.25, 0.27],
                        [120, 160]),
    'factorized_7x7': ({'model': {'factorize_7x7': True}}, [0.4, 0.3], [0.015, 0.016],
                       [100, 110]),
    'bn_auxiliary': ({'model': {'aux_bn': True}}, [0.2, 0.2], [0.030, 0.020], [200, 260]),
}
EVAL_STEPS = list(range(100, 1001, 100))
PROVENANCE = {'command': 'launch.py sweep sweeps/table3_ablation.py:scale=demo '
                         '--workdir runs/table3_demo --parallel 2',
              'commit': 'abc1234', 'dirty': True, 'started': '2026-05-12T14:03:00+0200',
              'host': 'ci-runner'}


def demo_error(final, decay, step):
  """Top-1 error (%) at `step`: from about 70 % down to `final` at step 1000."""
  return final + (70 - final) * (math.exp(-step / decay) - math.exp(-1000 / decay))


def reached(final, decay):
  return next(s for s in EVAL_STEPS if demo_error(final, decay, s) <= report.REACHED)


def nested_update(tree, changes):
  for key, value in changes.items():
    if isinstance(value, dict):
      nested_update(tree.setdefault(key, {}), value)
    else:
      tree[key] = value
  return tree


@pytest.fixture
def demo(tmp_path):
  """DEMO as a sweep directory: two seeds a row, the new metric names."""
  directory = str(tmp_path / 'table3_demo')
  runs, status = [], {}
  for i, (name, (change, errors, losses, decays)) in enumerate(DEMO.items()):
    runs.append({'name': name, 'config': 'configs/inception_v3.py', 'seeds': [0, 1]})
    for k, (error, loss, decay) in enumerate(zip(errors, losses, decays)):
      key = f'{name}/seed_{k}'
      config = nested_update({
          'seed': k, 'batch_size': 32, 'model': {'name': 'inception_v2'},
          'optim': {'name': 'sgd'}, 'loss': {'label_smoothing': 0.0},
          'tracking': {'wandb': False, 'name': key}, 'log_every_steps': 10 + i}, change)
      write(os.path.join(directory, key, 'config.json'), config)
      lines = [{'step': s, 'train/loss': 2.3 * math.exp(-s / decay) + loss,
                'train/top1_error': demo_error(error, decay, s)}
               for s in range(10, 1001, 10)]
      lines += [{'step': s, 'eval/top1_error': demo_error(error, decay, s),
                 'eval/top5_error': demo_error(error, decay, s) / 4,
                 'eval/loss': loss + math.exp(-s / decay)} for s in EVAL_STEPS]
      with open(os.path.join(directory, key, 'metrics.jsonl'), 'w') as f:
        lines.sort(key=lambda line: line['step'])
        f.writelines(json.dumps(line) + '\n' for line in lines)
      write(os.path.join(directory, key, 'result.json'), {
          'metrics': {'eval/top1_error': error, 'eval/top5_error': error / 4,
                      'eval/loss': loss, 'train/loss': loss},
          'steps': 1000, 'image_size': 75, 'params': 1_234_567, 'macs': 123_000_000,
          'train_images_per_sec': 250.0, 'wall_time_sec': 150.0 + i,
          'devices': 1, 'device_kind': 'cpu', 'platform': 'cpu',
          'finished_at': f'2026-05-12T14:{10 + 2 * i + k:02d}:00+0200'})
      status[key] = {'state': 'done', 'message': ''}
  write(os.path.join(directory, 'sweep.json'), {
      'name': 'table3_ablation', 'runs': runs, 'status': status, 'provenance': PROVENANCE})
  return directory


def test_old_and_new_metric_conventions_read_the_same(tmp_path):
  """eval/top1_error (%) where a run logged it, else 100 · (1 − eval/top1)."""
  old, new = str(tmp_path / 'old'), str(tmp_path / 'new')
  fake_run(old, 'a', top1=0.76, top5=0.93)
  fake_run(new, 'a', top1=0.76, top5=0.93)
  converted = {'eval/top1_error': 24.0, 'eval/top5_error': 7.0, 'eval/loss': 1.5}
  write(os.path.join(new, 'a', 'result.json'), {'metrics': converted, 'steps': 20})
  with open(os.path.join(new, 'a', 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(line) + '\n' for line in (
        {'step': 10, 'train/loss': 6.0, 'train/top1_error': 90.0},
        {'step': 10, 'eval/top1_error': 40.0, 'eval/loss': 2.0},
        {'step': 20, 'eval/top1_error': 30.0, 'eval/loss': 2.0}))
  for directory in (old, new):
    run = report.collect(directory).rows[0].runs[0]
    figures = (run.top1_error, run.top5_error, run.eval_loss)
    assert figures == pytest.approx((24.0, 7.0, 1.5))
    steps, errors = zip(*run.curves['eval/top1_error'])
    assert steps == (10, 20) and errors == pytest.approx((40.0, 30.0))


def test_rows_at_the_ceiling_are_named_and_compared_otherwise(demo):
  r = report.collect(demo)
  tied = list(DEMO)[1:]
  assert [row.name for row in r.tied] == tied
  assert [row.at_ceiling for row in r.rows] == [False, True, True, True, True]
  first = DEMO[tied[0]]
  for row in r.tied[1:]:
    _, errors, losses, decays = DEMO[row.name]
    steps = [reached(e, d) for e, d in zip(errors, decays)]
    first_steps = [reached(e, d) for e, d in zip(first[1], first[3])]
    assert [s.reached_step for s in row.runs] == steps
    assert row.tie_loss.delta == pytest.approx(np.mean(losses) - np.mean(first[2]))
    assert row.tie_loss.p_value == pytest.approx(welch_p(losses, first[2]), rel=1e-6)
    assert row.tie_reached.delta == pytest.approx(np.mean(steps) - np.mean(first_steps))
    if np.std(steps) or np.std(first_steps):
      assert row.tie_reached.p_value == pytest.approx(welch_p(steps, first_steps), rel=1e-6)
  assert r.rows[0].tie_loss is None and r.tied[0].tie_loss is None
  text = report.format_text(r)
  assert f'every seed of {", ".join(tied)} ends at ≤ 1 % top-1 error' in text
  tie_lines = text[text.index('At the ceiling'):].splitlines()
  header = next(l for l in tie_lines if l.startswith('run'))
  assert 'eval loss' in header and 'Δ loss' in header and 'step to ≤5%' in header
  fact = next(l for l in tie_lines if l.startswith('factorized_7x7'))
  d = r.rows[3].tie_loss
  assert f'{d.delta:+.4f}{"*" if d.significant else ""} (p {d.p_value:.2g})' in fact
  assert 'At the ceiling' in report.format_markdown(r)
  rows = {row['name']: row for row in json.loads(report.format_json(r))}
  assert rows['inception_v2']['tie'] is None and not rows['inception_v2']['at_ceiling']
  tie = rows['factorized_7x7']['tie']
  assert tie['versus'] == 'v2_rmsprop' and tie['ceiling'] == report.CEILING
  assert tie['eval_loss_mean'] == pytest.approx(np.mean(DEMO['factorized_7x7'][2]))
  assert tie['eval_loss_delta']['p_value'] == pytest.approx(d.p_value)
  assert tie['reached_step_mean'] == pytest.approx(
      np.mean([reached(e, s) for e, s in zip(*DEMO['factorized_7x7'][1::2])]))


def test_one_row_at_the_ceiling_is_no_tie(seeded):
  run = lambda error: report.Seed(0, 'x', 'done', finished=True, top1_error=error)
  assert report.Row('a', [run(0.2), run(1.0)]).at_ceiling
  assert not report.Row('b', [run(0.2), run(1.1)]).at_ceiling
  assert not report.Row('c', [report.Seed(0, 'x', 'failed')]).at_ceiling
  r = report.collect(seeded)
  assert r.tied == [] and 'At the ceiling' not in report.format_text(r)


def test_each_row_says_what_it_changes(demo):
  rows = json.loads(report.format_json(report.collect(demo)))
  assert rows[0]['changes'] is None
  # tracking.name and log_every_steps differ too: bookkeeping, left out.
  assert [row['changes'] for row in rows[1:]] == [
      {'optim.name': ['sgd', 'rmsprop']}, {'loss.label_smoothing': [0.0, 0.1]},
      {'model.factorize_7x7': [None, True]}, {'model.aux_bn': [None, True]}]
  r = report.collect(demo)
  assert report.change_lines(r.rows[1]) == ['optim.name: sgd → rmsprop']


def test_html_has_p_values_changes_and_provenance(demo):
  r = report.collect(demo)
  page = open(report.write_html(r, demo)).read()
  d = r.rows[1].vs_first
  assert f'{d.delta:+.2f}{"*" if d.significant else ""} (p {d.p_value:.2g})' in page
  assert 'white-space: nowrap' in page and 'overflow-x: auto' in page
  assert '<code>optim.name: sgd → rmsprop</code>' in page
  assert '<code>loss.label_smoothing: 0.0 → 0.1</code>' in page
  assert 'tracking.name' not in page
  for line in (f'command: {PROVENANCE["command"]}',
               'commit: abc1234 with uncommitted changes',
               'started: 2026-05-12 14:03 +0200 on ci-runner', '10 runs on 1 cpu device',
               'runs finished: 2026-05-12 14:10 +0200 to 2026-05-12 14:19 +0200',
               'report written: '):
    assert html.escape(line, quote=False) in page
  assert 'Rows tied at the ceiling' in page
  assert 'paper' not in page.split('<table>')[1].split('</table>')[0]   # no paper here


def test_html_works_offline_in_chromium(demo, tmp_path):
  """The report loads in headless Chromium without a console message and
  draws every figure, with nothing fetched: plotly.js is embedded, once.
  Fails (never skips) without Chromium, naming the install command."""
  path = report.write_html(report.collect(demo), demo)
  page = open(path).read()
  assert external_loads(page) == []
  assert page.count('Plotly.newPlot(') == 3 and page.count('plotly.js v') == 1
  assert 'MathJax.js' not in page and 'cdn.plot.ly' not in page.split('<script')[0]
  messages, plots = report_browser.check(path)
  assert messages == []
  assert plots == report_browser.placeholders(path) == 3
  png = report_browser.screenshot(path, str(tmp_path / 'report.png'), 1200, 900)
  assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_report_browser_reports_console_errors(tmp_path, capsys):
  page = tmp_path / 'broken.html'
  page.write_text('<!DOCTYPE html><html><body><script>console.error("logged")</script>'
                  '<script>throw new Error("thrown")</script></body></html>')
  messages, plots = report_browser.check(str(page))
  assert plots == 0
  assert [m.split(' (file://')[0] for m in messages] == ['logged', 'Uncaught Error: thrown']
  assert report_browser.main(['check', str(page)]) == 1
  assert capsys.readouterr().err.startswith(f'error: {page}: 2 console message(s)')


def test_report_browser_without_chromium_names_the_install(tmp_path, monkeypatch, capsys):
  monkeypatch.delenv('CHROMIUM', raising=False)
  monkeypatch.setattr(report_browser.shutil, 'which', lambda name: None)
  (tmp_path / 'a.html').write_text('<p>a</p>')
  assert report_browser.main(['check', str(tmp_path / 'a.html')]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'apt-get install chromium' in err
