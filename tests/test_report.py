"""Sweep reports from fake sweep directories (nothing is trained here)."""

from __future__ import annotations

import json
import os

import pytest

from inception_jax import report
from inception_jax.errors import UserError

PAPER = {
    'inception_v2': dict(top1_error=23.4, top5_error=None, cost_bn_ops=3.8),
    'v2_rmsprop': dict(top1_error=23.1, top5_error=6.3, cost_bn_ops=3.8),
    'inception_v3': dict(top1_error=21.2, top5_error=5.6, cost_bn_ops=4.8),
}


def write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(obj, f)


def fake_run(directory, name, top1=None, top5=0.9, steps=20, curves=True):
  """A run directory; with `top1` also a result.json (a finished run)."""
  workdir = os.path.join(directory, name)
  write(os.path.join(workdir, 'config.json'), {'batch_size': 8})
  if curves:
    lines = [{'step': s, 'train/loss': 7.0 - s / 10, 'train/top1': 0.1, 'train/lr': 0.045}
             for s in range(1, steps + 1)]
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
  assert v2.top1_error == pytest.approx(24.0)
  assert v2.top5_error == pytest.approx(7.0)
  assert v2.params == 23_834_568
  assert v2.gmacs == pytest.approx(5.713)
  assert (v2.image_size, v2.steps) == (299, 20)
  assert v2.paper['top1_error'] == 23.4
  assert r.rows[2].top1_error == pytest.approx(20.0)
  assert len(v2.curves['train/loss']) == 20
  assert v2.curves['eval/top1'] == [(10, 0.6), (20, 0.7)]


def test_failed_run_has_its_state_and_blank_figures(table3):
  failed = report.collect(table3).rows[1]
  assert failed.state == 'failed'
  assert failed.message == 'loss is NaN at step 21'
  assert failed.top1_error is None and failed.params is None
  assert len(failed.curves['train/loss']) == 20           # the cut line is skipped
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
  assert '24.00' in v2 and '23,834,568' in v2 and '5.713' in v2 and '1h02m' in v2
  end = lambda line, cell: line.index(cell) + len(cell)
  assert end(v2, '24.00') == end(header, 'top-1 err')   # figures align right
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
  assert rows[0]['top1_error'] == pytest.approx(24.0)
  assert rows[0]['top5_error'] == pytest.approx(7.0)
  assert rows[0]['params'] == 23_834_568
  assert rows[0]['paper'] == PAPER['inception_v2']
  assert rows[1]['state'] == 'failed' and rows[1]['top1_error'] is None


def test_json_writes_nan_as_null(tmp_path):
  directory = str(tmp_path / 'nan')
  fake_run(directory, 'a', top1=float('nan'))
  rows = json.loads(report.format_json(report.collect(directory)))
  assert rows[0]['top1_error'] is None


def test_html(table3):
  path = report.write_html(report.collect(table3), table3)
  assert path == os.path.join(table3, 'report.html')
  page = open(path).read()
  assert '<table>' in page and '</table>' in page
  for name in ('inception_v2', 'v2_rmsprop', 'inception_v3', 'paper top-1'):
    assert name in page
  assert 'data:image/png;base64,' in page
  assert '<link' not in page and '<script' not in page  # self-contained


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
  assert r.rows[1].top1_error == pytest.approx(30.0)
  assert 'paper' not in report.format_markdown(r).split('\n')[2]
  assert 'data:image/png;base64,' in open(report.write_html(r, directory)).read()


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
