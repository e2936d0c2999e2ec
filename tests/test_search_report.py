"""Search reports from a study built here (Optuna's file journal, nothing
trained): the trials table, pruning's saving, the best trial, JSON, and the
HTML report with Optuna's figures, drawn in headless Chromium."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from helpers import ROOT, run_cli

from inception_jax import rundir, search_report
from inception_jax.errors import UserError

_spec = importlib.util.spec_from_file_location(
    'report_browser', os.path.join(ROOT, 'scripts', 'report_browser.py'))
report_browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report_browser)

LR, LS, OPT = 'optim.learning_rate', 'loss.label_smoothing', 'optim.name'
SPACE = {LR: FloatDistribution(1e-3, 1.0, log=True), LS: FloatDistribution(0.0, 0.2),
         OPT: CategoricalDistribution(['momentum', 'rmsprop'])}
MAX_STEPS = 12
# number: (state, params, value, intermediate values, user attrs, result.json)
TRIALS = {
    0: ('COMPLETE', (0.1, 0.1, 'rmsprop'), 20.0, {4: 40.0, 8: 30.0, 12: 20.0},
        dict(steps=12, wall_seconds=30.0, attempts=1), dict(steps=12)),
    # No `steps` attribute: read from result.json (the step it was pruned at).
    1: ('PRUNED', (0.01, 0.0, 'momentum'), None, {4: 60.0},
        dict(wall_seconds=10.0, attempts=1),
        dict(steps=4, state='pruned', pruned_at_step=4)),
    2: ('FAIL', (0.5, 0.2, 'rmsprop'), None, {},
        dict(steps=2, wall_seconds=5.0, error='loss is NaN at step 2'), None),
    3: ('COMPLETE', (0.05, 0.05, 'rmsprop'), 15.0, {4: 35.0, 8: 25.0, 12: 15.0},
        dict(steps=12, wall_seconds=95.0, attempts=2), dict(steps=12)),
    4: ('PRUNED', (0.02, 0.1, 'momentum'), None, {4: 55.0, 8: 50.0},
        dict(steps=8, wall_seconds=20.0, attempts=1),
        dict(steps=8, state='pruned', pruned_at_step=8)),
}
RUNNING = (0.03, 0.15, 'momentum')        # trial 5: started, 3 steps logged
PROVENANCE = {'command': 'python -m inception_jax search searches/lr_ls.py:scale=tiny '
                         '--workdir runs/s --trials 8', 'commit': 'abc1234',
              'dirty': False, 'started': '2026-05-12T14:03:00+02:00', 'host': 'ci'}


def storage(directory):
  return JournalStorage(JournalFileBackend(os.path.join(directory, 'study.journal')))


def fake_trial_dir(directory, number, result=None, logged=()):
  """DIR/trial_NNN: a config.json, metrics.jsonl rows at `logged` steps, and
  with `result` a result.json (a trial that ended)."""
  run = rundir.SearchDir(directory).trial(number)
  os.makedirs(run.path, exist_ok=True)
  run.write_config({'total_steps': MAX_STEPS, 'seed': 0})
  with open(run.metrics, 'w') as f:
    f.writelines(json.dumps({'step': s, 'train/loss': 3.0 - s / 10}) + '\n' for s in logged)
  if result is not None:
    run.write_result({'metrics': {'eval/top1_error': 20.0}, 'wall_time_sec': 1.0,
                      'commit': 'abc1234', 'dirty': False, 'devices': 1,
                      'platform': 'cpu', 'finished_at': '2026-05-12T14:10:00+02:00',
                      **result})


def make_search(directory, trials=TRIALS, running=True, max_steps=MAX_STEPS):
  """A search directory as the driver leaves it: search.json, the journal's
  study with `trials` (and a running one), a run directory per trial."""
  os.makedirs(directory, exist_ok=True)
  rundir.SearchDir(directory).write_record({
      'name': 'lr_ls', 'search': 'searches/lr_ls.py:scale=tiny', 'trials': 8,
      'config': 'configs/inception_v3.py:scale=tiny', 'overrides': {},
      'space': {LR: {'type': 'LogUniform', 'low': 1e-3, 'high': 1.0},
                LS: {'type': 'Uniform', 'low': 0.0, 'high': 0.2},
                OPT: {'type': 'Categorical', 'choices': ['momentum', 'rmsprop']}},
      'objective': 'eval/top1_error', 'direction': 'minimize',
      'pruner': {'name': 'hyperband', 'min_steps': 4, 'max_steps': max_steps,
                 'reduction_factor': 3},
      'provenance': PROVENANCE})
  study = optuna.create_study(study_name='search', storage=storage(directory),
                              direction='minimize')
  study.set_user_attr('objective', 'eval/top1_error')
  study.set_user_attr('direction', 'minimize')
  study.set_user_attr('pruner', {'name': 'hyperband', 'min_steps': 4,
                                 'max_steps': max_steps, 'reduction_factor': 3})
  for number, (state, params, value, intermediate, attrs, result) in trials.items():
    study.enqueue_trial(dict(zip(SPACE, params)))
    trial = study.ask(SPACE)
    assert trial.number == number
    for step, v in intermediate.items():
      trial.report(v, step)
    for key, v in attrs.items():
      trial.set_user_attr(key, v)
    study.tell(trial, value, state=TrialState[state])
    fake_trial_dir(directory, number, result, logged=range(1, (attrs.get('steps') or
                                                               result['steps']) + 1))
  if running:
    study.enqueue_trial(dict(zip(SPACE, RUNNING)))
    trial = study.ask(SPACE)
    fake_trial_dir(directory, trial.number, logged=(1, 2, 3))
  return directory


@pytest.fixture
def search(tmp_path):
  return make_search(str(tmp_path / 'search'))


def test_trials_table_rows(search):
  header, rows = search_report.table(search_report.collect(search))
  assert header == ['trial', LR, LS, OPT, 'eval/top1_error', 'steps', 'wall time', 'state']
  assert rows == [
      ['0', '0.1', '0.1', 'rmsprop', '20', '12', '30.0s', 'complete'],
      ['1', '0.01', '0', 'momentum', '(60)', '4', '10.0s', 'pruned'],
      ['2', '0.5', '0.2', 'rmsprop', '', '2', '5.0s', 'failed'],
      ['3', '0.05', '0.05', 'rmsprop', '15', '12', '1m35s', 'complete'],
      ['4', '0.02', '0.1', 'momentum', '(50)', '8', '20.0s', 'pruned'],
      # Running: the steps its metrics.jsonl holds so far; no wall time yet.
      ['5', '0.03', '0.15', 'momentum', '', '3', '', 'running'],
  ]


def test_text_gives_the_saving_and_the_best_trial(search):
  text = search_report.render(search, 'text')
  lines = text.splitlines()
  assert lines[0] == (f'search lr_ls ({search}): searches/lr_ls.py:scale=tiny; '
                      f'2 complete, 2 pruned, 1 failed, 1 running of 8 trials')
  assert lines[2].split() == ['trial', LR, LS, OPT, 'eval/top1_error', 'steps', 'wall',
                              'time', 'state']
  # Complete and pruned trials ran 12 + 4 + 12 + 8 steps; to the end, 4 × 12.
  assert ('pruning: 36 training steps over 4 complete or pruned trials, against 48 '
          'trained to the end (4 × 12): 25.0 % fewer steps') in lines
  assert ('best: trial 3, eval/top1_error 15, with optim.learning_rate=0.05, '
          'loss.label_smoothing=0.05, optim.name=rmsprop (trial_003)') in lines
  assert 'trial_002 failed: loss is NaN at step 2' in lines
  assert 'confirmation' not in text


def test_json_fields(search):
  data = json.loads(search_report.render(search, 'json'))
  assert (data['objective'], data['direction'], data['max_steps']) == (
      'eval/top1_error', 'minimize', MAX_STEPS)
  assert data['params'] == [LR, LS, OPT]
  assert data['counts'] == {'complete': 2, 'pruned': 2, 'failed': 1, 'running': 1,
                            'waiting': 0}
  assert data['saving'] == {'trials': 4, 'steps_used': 36, 'steps_full': 48,
                            'max_steps': 12, 'percent': 25.0}
  assert data['best'] == {'number': 3, 'value': 15.0, 'directory': 'trial_003',
                          'params': {LR: 0.05, LS: 0.05, OPT: 'rmsprop'}}
  trials = {t['number']: t for t in data['trials']}
  assert [trials[n]['state'] for n in range(6)] == [
      'complete', 'pruned', 'failed', 'complete', 'pruned', 'running']
  assert trials[1]['pruned_at_step'] == 4 and trials[1]['value'] is None
  assert trials[1]['last_value'] == 60.0
  assert trials[4]['intermediate'] == [[4, 55.0], [8, 50.0]]
  assert trials[3]['attempts'] == 2 and trials[3]['wall_seconds'] == 95.0
  assert data['confirm'] is None


def test_markdown_table(search):
  text = search_report.render(search, 'markdown')
  assert text.startswith('### Search `lr_ls`')
  assert f'| trial | {LR} | {LS} | {OPT} | eval/top1_error | steps | wall time | state |' \
      in text
  assert '| 1 | 0.01 | 0 | momentum | (60) | 4 | 10.0s | pruned |' in text
  assert '25.0 % fewer steps' in text


def test_max_steps_auto_is_the_longest_complete_trial(tmp_path):
  """A base config in epochs of a dataset not yet opened records 'auto'."""
  directory = make_search(str(tmp_path / 's'), max_steps='auto')
  search = search_report.collect(directory)
  assert search.max_steps == MAX_STEPS and search.saving.percent == 25.0


def test_maximize_picks_the_largest_value(tmp_path):
  directory = make_search(str(tmp_path / 's'), running=False)
  study = optuna.load_study(study_name='search', storage=storage(directory))
  study.set_user_attr('direction', 'maximize')
  assert search_report.collect(directory).best.number == 0


def test_html_holds_optunas_figures_and_draws_them_offline(search, tmp_path):
  """Optuna's four figures, plotly.js embedded once, nothing fetched; the
  page loads in headless Chromium without a console message and draws
  every figure (fails, never skips, without Chromium)."""
  assert search_report.render(search, 'html') == f'wrote {search}/report.html'
  path = os.path.join(search, 'report.html')
  page = open(path).read()
  for title in ('Optimization History Plot', 'Intermediate Values Plot',
                'Parallel Coordinate Plot', 'Hyperparameter Importances'):
    assert title in page, title
  assert page.count('Plotly.newPlot(') == 4 and page.count('plotly.js v') == 1
  assert 'cdn.plot.ly' not in page.split('<script')[0]
  assert '<tr class="best"><td>3</td>' in page and '<tr class="failed"><td>2</td>' in page
  assert 'commit: abc1234 (clean)' in page and 'runs finished: 2026-05-12 14:10' in page
  assert '25.0 % fewer steps' in page
  messages, plots = report_browser.check(path)
  assert messages == []
  assert plots == report_browser.placeholders(path) == 4


def test_importances_need_two_complete_trials(tmp_path):
  directory = make_search(str(tmp_path / 's'), running=False,
                          trials={n: TRIALS[n] for n in (0, 1, 2)})
  search_report.render(directory, 'html')
  page = open(os.path.join(directory, 'report.html')).read()
  assert 'Parameter importances: need 2 complete trials or more (1 so far).' in page
  assert 'Hyperparameter Importances' not in page
  assert page.count('Plotly.newPlot(') == 3 and page.count('plotly.js v') == 1


def test_a_study_without_trials_reports_so(tmp_path):
  directory = make_search(str(tmp_path / 's'), trials={}, running=False)
  text = search_report.render(directory, 'text')
  assert 'no trials of 8 trials' in text.splitlines()[0]
  assert 'pruning: no complete or pruned trial yet' in text
  assert 'best: no complete trial yet' in text
  search_report.render(directory, 'html')
  page = open(os.path.join(directory, 'report.html')).read()
  assert 'Plotly.newPlot(' not in page and 'no complete trial yet' in page


def test_confirmation_table_follows(search):
  confirm = rundir.SearchDir(search).confirm
  for name, errors in (('base', (30.0, 32.0)), ('trial_003', (15.0, 16.0))):
    for k, error in enumerate(errors):
      run = rundir.SweepDir(confirm).run(rundir.seed_name(name, k))
      os.makedirs(run.path)
      run.write_config({'seed': k})
      run.write_result({'metrics': {'eval/top1_error': error}, 'steps': MAX_STEPS})
  rundir.SweepDir(confirm).write_record(
      {'name': 'confirm', 'runs': [{'name': n, 'seeds': [0, 1]}
                                   for n in ('base', 'trial_003')]})
  text = search_report.render(search, 'text')
  table = text.split('confirmation: the best trials and the base config, with seeds\n'
                     f'sweep confirm ({confirm})')[1].splitlines()
  assert any(line.startswith('trial_003') and '15.50 ± 0.71 (2)' in line for line in table)
  data = json.loads(search_report.render(search, 'json'))
  assert [row['name'] for row in data['confirm']] == ['base', 'trial_003']
  search_report.render(search, 'html')
  assert 'Confirmation with seeds' in open(os.path.join(search, 'report.html')).read()


def test_reading_takes_no_lock_and_writes_nothing(search):
  journal = os.path.join(search, 'study.journal')
  before = open(journal, 'rb').read()
  with rundir.SearchDir(search).lock():             # a driver is running
    search_report.render(search, 'json')
  assert open(journal, 'rb').read() == before


def test_bad_directories_in_one_line(search, tmp_path):
  os.remove(os.path.join(search, 'study.journal'))
  with pytest.raises(UserError, match=r'holds no study yet \(study.journal is missing\)'):
    search_report.collect(search)
  assert not os.path.exists(os.path.join(search, 'study.journal'))   # not created
  optuna.create_study(study_name='other', storage=storage(search))
  with pytest.raises(UserError, match="holds no study named 'search'"):
    search_report.collect(search)
  with pytest.raises(UserError, match='not a search directory'):
    search_report.collect(str(tmp_path))
  with pytest.raises(UserError, match='unknown report format'):
    search_report.render(search, 'pdf')


def test_without_optuna_names_the_extra(search, monkeypatch):
  monkeypatch.setitem(sys.modules, 'optuna', None)          # import optuna fails
  with pytest.raises(UserError, match=r"needs optuna.*inception_jax\[search\]"):
    search_report.collect(search)


def test_compare_on_a_search_directory(search):
  result = run_cli('compare', search, devices=1)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'search lr_ls ({search}):')
  assert '25.0 % fewer steps' in result.stdout
  os.remove(os.path.join(search, 'study.journal'))
  result = run_cli('compare', search, devices=1)
  assert result.returncode == 2
  assert result.stderr.count('\n') == 1 and 'holds no study yet' in result.stderr
