"""`search`: the driver of an Optuna study. The same seed proposes the same
parameters; pruned trials are told and the steps they saved counted; a
driver killed while a trial trains takes its trainer along, and the rerun
completes the study without a duplicate trial; two trials on the local SLURM
cluster share one study; `--confirm` retrains the best trial with seeds;
bad input is one line.

Most driver tests start a stand-in trainer (FAKE_TRAIN: a value from the
learning rate, reported to the study through `pruning.TrialReporter` as the
trainer does) instead of training; the kill, SLURM and confirmation tests
train the tiny network, searching a key that does not change the compiled
program (`data.crop_area_min`), so the trials share one compilation."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from helpers import ROOT, TINY_CONFIG, FakeLauncher, slurm_cluster_problem, start_cli

from inception_jax import config_lib, rundir, search

FAKE_TRAIN = '''
import json, math, os, sys
from inception_jax import pruning
args = sys.argv[1:]
workdir = args[args.index('--workdir') + 1]
given = dict(a[len('--config.'):].split('=', 1) for a in args if a.startswith('--config.'))
value = 10 * abs(math.log10(float(given['optim.learning_rate']) / 0.02))
reporter = pruning.TrialReporter.from_arg(args[args.index('--search-trial') + 1])
os.makedirs(workdir, exist_ok=True)
result = os.path.join(workdir, 'result.json')
for step in (2, 4, 6):
  if reporter.report(step, {'eval/top1_error': value + 6 - step}, last=step == 6):
    json.dump({'state': 'pruned', 'pruned_at_step': step, 'steps': 6}, open(result, 'w'))
    sys.exit(7)
json.dump({'metrics': {'eval/top1_error': value}, 'steps': 6}, open(result, 'w'))
'''

SEARCH_FILE = '''
from inception_jax import config_lib, search

def get_search(arg=None):
  arg = config_lib.parse_arg(arg, seed=0, trials={trials})
  return search.Search(
      config={config!r}, overrides={overrides!r}, space={{{space}}},
      objective={objective!r}, sampler=search.Sampler({sampler!r}, seed=arg.seed,
                                                      startup_trials=2),
      pruner=search.Pruner({pruner!r}, min_steps={min_steps}), trials=arg.trials)
'''
LR_SPACE = "'optim.learning_rate': search.LogUniform(0.001, 0.1)"
# A key of the input pipeline: trials that differ in it share compiled programs.
CROP_SPACE = "'data.crop_area_min': search.Uniform(0.3, 0.9)"


def write_search(path, *, config=TINY_CONFIG, overrides=None, space=LR_SPACE,
                 objective='eval/top1_error', sampler='tpe', pruner='hyperband',
                 min_steps=2, trials=6):
  path.write_text(SEARCH_FILE.format(config=config, overrides=overrides or {}, space=space,
                                     objective=objective, sampler=sampler, pruner=pruner,
                                     min_steps=min_steps, trials=trials))
  return str(path)


class FakeTrials(search.LocalTrials):
  """Local trials that run FAKE_TRAIN in place of `train`."""

  def __init__(self, program, parallel=1):
    super().__init__(parallel)
    self.program = program

  def command(self, job):
    return [sys.executable, self.program, *job.args]


@pytest.fixture
def fake(tmp_path):
  program = tmp_path / 'fake_train.py'
  program.write_text(FAKE_TRAIN)
  return lambda parallel=1: FakeTrials(str(program), parallel)


def trials_of(directory):
  return optuna.load_study(study_name=search.STUDY_NAME,
                           storage=search.storage(str(directory))).get_trials()


def quiet(*_):
  pass


def test_the_same_seed_proposes_the_same_parameters(tmp_path, fake):
  """One at a time, a seed's trials have the same parameters, whether the
  driver ran once or stopped and went on; another seed, other ones."""
  path = write_search(tmp_path / 'lr.py')
  runs = {}
  for name, arg, steps in (('a', 'seed=0', [6]), ('b', 'seed=0', [3, 6]),
                           ('c', 'seed=1', [6])):
    for n in steps:
      search.run_search(f'{path}:{arg}', str(tmp_path / name), launcher=fake(),
                        trials=n, echo=quiet)
    runs[name] = trials_of(tmp_path / name)
  params = {name: [t.params for t in trials] for name, trials in runs.items()}
  assert len(params['a']) == 6 and params['a'] == params['b']
  assert params['c'] != params['a']
  # Past the 2 random startup trials TPE proposes from the study's history.
  assert [t.number for t in runs['a']] == list(range(6))
  assert sorted(os.listdir(tmp_path / 'a')) == [
      '.search.lock', 'search.json', 'study.journal', *[f'trial_{n:03d}' for n in range(6)]]
  for t in runs['a']:
    assert t.user_attrs['workdir'] == f'trial_{t.number:03d}'
    assert t.user_attrs['attempts'] == 1 and t.user_attrs['steps'] in (2, 4, 6)
  recorded = rundir.SearchDir(str(tmp_path / 'a')).read_record()
  assert recorded['space'] == {'optim.learning_rate': {'type': 'LogUniform',
                                                       'low': 0.001, 'high': 0.1}}
  assert recorded['pruner'] == {'name': 'hyperband', 'min_steps': 2, 'reduction_factor': 3,
                                'max_steps': 6}
  assert recorded['objective'] == 'eval/top1_error' and recorded['trials'] == 6


def test_pruned_trials_are_told_and_the_steps_saved_printed(tmp_path, fake):
  lines = []
  path = write_search(tmp_path / 'lr.py', sampler='random', pruner='successive_halving',
                      trials=8)
  summary = search.run_search(path, str(tmp_path / 's'), launcher=fake(2), echo=lines.append)
  trials = trials_of(tmp_path / 's')
  states = [t.state for t in trials]
  assert len(trials) == 8 and optuna.trial.TrialState.PRUNED in states
  assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
  for t in trials:
    assert t.intermediate_values          # the stand-in reported to the study
    if t.state == optuna.trial.TrialState.PRUNED:
      assert t.user_attrs['steps'] == max(t.intermediate_values) < 6
  used = sum(t.user_attrs['steps'] for t in trials)
  assert f'steps trained: {used:,} of the {8 * 6:,}' in '\n'.join(summary.lines())
  assert f'pruning saved {100 * (1 - used / 48):.1f}%' in summary.lines()[-1]
  assert any('] pruned at step 2: eval/top1_error' in line for line in lines)
  assert summary.exit_code() == 0


def test_a_trial_left_running_is_trained_again_once(tmp_path, fake):
  """What a driver killed mid-trial leaves: a RUNNING trial. The rerun trains
  it in its directory under its number (no new trial for it); a trial left
  running by two drivers fails."""
  path = write_search(tmp_path / 'lr.py', trials=3)
  directory = str(tmp_path / 's')
  search.run_search(path, directory, launcher=fake(), trials=1, echo=quiet)
  loaded = search.load_search(path)
  study = search.Study(directory, loaded, search.describe(loaded, path))
  for attempts in (1, 2):             # trials 1 and 2, as dead drivers left them
    number, _ = study.ask()
    study.set(number, attempts=attempts)
  lines = []
  search.run_search(path, directory, launcher=fake(), echo=lines.append)
  trials = trials_of(directory)
  assert [t.number for t in trials] == [0, 1, 2]
  assert [t.state.name for t in trials[1:]] == ['COMPLETE', 'FAIL']
  assert trials[1].user_attrs['attempts'] == 2
  assert 'left running by 2 drivers that died' in trials[2].user_attrs['error']
  assert any(line.startswith('[trial_001] started') for line in lines)


def test_a_study_is_refused_to_another_search_file_and_to_an_edited_one(tmp_path, fake,
                                                                       cli_main):
  path = write_search(tmp_path / 'lr.py', trials=1)
  directory = str(tmp_path / 's')
  search.run_search(path, directory, launcher=fake(), echo=quiet)
  other = write_search(tmp_path / 'other.py', trials=1)
  code, out, err = cli_main('search', other, '--workdir', directory)
  assert code == 2 and err == (f'error: {directory} holds the study of another search file '
                               f'({path}), not {other}; give another --workdir\n')
  write_search(tmp_path / 'lr.py', trials=1, space="'optim.learning_rate': "
               "search.LogUniform(0.001, 0.3)", objective='eval_raw/top1_error')
  code, out, err = cli_main('search', path, '--workdir', directory, '--dry-run')
  assert code == 2 and err.count('\n') == 1, err
  assert err.startswith(f'error: {path} differs from the search that started the study '
                        f'in {directory}: objective: eval/top1_error -> eval_raw/top1_error, '
                        f'space.optim.learning_rate.high: 0.1 -> 0.3; restore it')
  # More trials is the same study, continued.
  write_search(tmp_path / 'lr.py', trials=1)
  search.run_search(path, directory, launcher=fake(), trials=2, echo=quiet)
  assert len(trials_of(directory)) == 2


def test_a_second_driver_on_the_same_directory_stops_at_once(tmp_path, cli_main):
  path = write_search(tmp_path / 'lr.py', trials=1)
  directory = tmp_path / 's'
  directory.mkdir()
  with rundir.SearchDir(str(directory)).lock():
    code, out, err = cli_main('search', path, '--workdir', directory)
  assert code == 2 and err == (f'error: another search is running in {directory} '
                               f'(pid {os.getpid()})\n')


@pytest.mark.parametrize('space, message', [
    ("'optim.learning_rat': search.LogUniform(0.001, 0.1)",
     "unknown config key 'optim.learning_rat' in the space; did you mean "
     "'optim.learning_rate'?"),
    ("'optim.learning_rate': search.Uniform(0.1, 0.1)",
     "space 'optim.learning_rate': empty range Uniform(0.1, 0.1): low == high"),
    ("'optim.learning_rate': search.LogUniform(0.1, 0.001)",
     "space 'optim.learning_rate': inverted range LogUniform(0.1, 0.001): low > high"),
    ("'optim.learning_rate': search.LogUniform(0.0, 0.1)",
     "space 'optim.learning_rate': a log range needs low > 0, got LogUniform(0.0, 0.1)"),
    ("'optim.learning_rate': search.Int(-2, 5, log=True)",
     "space 'optim.learning_rate': a log range needs low > 0"),
    ("'batch_size': search.Uniform(8, 32)",
     "space 'batch_size' = 8.0: config key 'batch_size' expects int, got 8.0"),
    ("'loss.label_smoothing': search.Uniform(0.0, 1.5)",
     "space 'loss.label_smoothing' = 1.5: "),
    ("'total_steps': search.Int(2, 6)",
     "'total_steps' cannot be searched: the search sets it"),
    ("'optim.name': search.Categorical([])",
     "space 'optim.name': Categorical needs a non-empty list of choices"),
])
def test_a_bad_space_is_one_line(tmp_path, cli_main, space, message):
  path = write_search(tmp_path / 'bad.py', space=space)
  code, out, err = cli_main('search', path, '--workdir', tmp_path / 's', '--dry-run')
  assert code == 2 and err.count('\n') == 1, err
  assert err.startswith(f'error: {path}: {message}'), err
  assert not os.path.exists(tmp_path / 's')


@pytest.mark.parametrize('change, message', [
    (dict(objective='eval/top1'), "objective 'eval/top1' is not a metric runs log at "
                                  "their evaluations; one of eval/top1_error,"),
    (dict(objective='train/loss'), "objective 'train/loss' is not a metric runs log"),
    (dict(sampler='bayes'), 'sampler must be search.Sampler(name=...) with name one of '
                            'tpe, random, grid, cmaes'),
    (dict(sampler='grid'), "the grid sampler needs Categorical or Int entries; "
                           "'optim.learning_rate' is a LogUniform range"),
    (dict(pruner='asha'), 'pruner must be search.Pruner(name=...) with name one of'),
    (dict(min_steps=10), "the pruner's min_steps (10) exceeds the trials' 6 steps"),
])
def test_a_bad_objective_sampler_or_pruner_is_one_line(tmp_path, cli_main, change, message):
  path = write_search(tmp_path / 'bad.py', **change)
  code, out, err = cli_main('search', path, '--workdir', tmp_path / 's', '--dry-run')
  assert code == 2 and err.count('\n') == 1, err
  assert err.startswith(f'error: {path}: {message}'), err


def test_the_demo_search_resolves_and_its_dry_run_writes_nothing(tmp_path, cli_main):
  code, out, err = cli_main('search', 'lr_smoothing', '--workdir', tmp_path / 's',
                            '--dry-run')
  assert code == 0, err
  assert ('minimize eval/top1_error; TPE sampler (seed 0), Hyperband pruner: rungs at '
          'steps 100, 300, 900 of 1000') in out
  assert 'optim.learning_rate: LogUniform(0.003, 0.1)' in out
  assert os.listdir(tmp_path) == []
  demo = search.load_search('lr_smoothing')
  assert demo.config == 'configs/inception_v3.py:model=inception_v2,scale=demo'
  assert demo.overrides == {'optim.name': 'momentum'} and demo.trials == 20


def test_confirm_is_a_sweep_of_the_base_and_the_best_trials_over_seeds(tmp_path, fake):
  """`--confirm K --top M` (search.confirm): DIR/confirm.py, a sweep file of
  the base config and the M best trials' parameters, each over seeds 0 … K-1,
  run in DIR/confirm (here by a launcher that trains nothing)."""
  path = write_search(tmp_path / 'lr.py', sampler='random', pruner='none', trials=3)
  directory = tmp_path / 's'
  search.run_search(path, str(directory), launcher=fake(), echo=quiet)
  best = search.best_trials(trials_of(directory), 'minimize', 2)
  base_rate = config_lib.load(TINY_CONFIG).optim.learning_rate
  rows = {'base': None, **{f'trial_{t.number:03d}': t.params for t in best}}
  launcher = FakeLauncher()
  outcomes = search.confirm(str(directory), 3, 2, launcher=launcher, echo=quiet)
  assert sorted(outcomes) == sorted(f'{row}/seed_{k}' for row in rows for k in range(3))
  assert all(o.state == 'done' for o in outcomes.values())
  for row, params in rows.items():
    for k in range(3):
      config = rundir.read_json(str(directory / 'confirm' / row / f'seed_{k}' / 'config.json'))
      assert config['seed'] == k
      assert config['optim']['learning_rate'] == (
          params['optim.learning_rate'] if params else base_rate)
  # The written sweep file reruns as a sweep of the same runs.
  assert (directory / 'confirm.py').exists()
  again = search.confirm(str(directory), 3, 2, launcher=FakeLauncher(), echo=quiet)
  assert {o.state for o in again.values()} == {'skipped'}


# --- Real trainers: a killed driver, SLURM, the confirmation ---------------------------

def alive(pid):
  """Whether process `pid` runs (a zombie waiting for its reaper does not)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rpartition(')')[2].split()[0] != 'Z'
  except OSError:
    return False


def wait_for(condition, timeout, what):
  begin = time.time()
  while not condition():
    assert time.time() - begin < timeout, f'timed out waiting for {what}'
    time.sleep(0.2)


def launch(*args, timeout=900):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.xdist_group('search_kill')
def test_a_killed_driver_takes_its_trainer_along_and_the_rerun_completes(tmp_path):
  """SIGKILL to the driver while trial 0 trains: the trainer saves and exits
  (no orphan); the rerun resumes trial 0 under its number and completes the
  study of 2 trials, each number and directory once. Then `--confirm 1
  --top 1` trains the base config and the best trial (more seeds and trials:
  test_confirm_is_a_sweep_of_the_base_and_the_best_trials_over_seeds)."""
  path = write_search(tmp_path / 'crop.py', space=CROP_SPACE, sampler='random',
                      overrides={'total_steps': 40}, min_steps=20, trials=2)
  directory = tmp_path / 's'
  log = tmp_path / 'driver.log'
  with open(log, 'w') as f:
    driver = start_cli('search', path, '--workdir', directory, log=f)
  trial_log = directory / 'trial_000' / 'train.log'
  wait_for(lambda: trial_log.exists() and ' step 1/40 ' in trial_log.read_text(), 300,
           'trial 0 to train')
  pid = int((directory / 'trial_000' / '.lock').read_text())
  driver.send_signal(signal.SIGKILL)
  driver.wait()
  wait_for(lambda: not alive(pid), 120, f'the trainer (pid {pid}) to exit')
  assert 'stopping (SIGTERM)' in trial_log.read_text()
  assert not (directory / 'trial_000' / 'result.json').exists()
  assert rundir.RunDir(str(directory / 'trial_000')).has_checkpoint()

  proc = launch('search', path, '--workdir', directory, '--confirm', 1, '--top', 1)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  trials = trials_of(directory)
  assert [t.number for t in trials] == [0, 1]
  assert all(t.state.name in ('COMPLETE', 'PRUNED') for t in trials)
  assert [t.user_attrs['attempts'] for t in trials] == [2, 1]
  assert sorted(p.name for p in directory.glob('trial_*')) == ['trial_000', 'trial_001']
  assert '[trial_000] resuming: data.crop_area_min=' in proc.stdout
  assert 'search crop: 2/2 trials ended' in proc.stdout
  # The confirmation: a sweep of the base config and the best trial, trained.
  best = search.best_trials(trials, 'minimize', 1)[0]
  name = f'trial_{best.number:03d}'
  sweep_record = json.load(open(directory / 'confirm' / 'sweep.json'))
  assert sorted(sweep_record['status']) == sorted(f'{row}/seed_0' for row in ('base', name))
  config = json.load(open(directory / 'confirm' / name / 'seed_0' / 'config.json'))
  assert config['data']['crop_area_min'] == best.params['data.crop_area_min']
  assert rundir.read_json(str(directory / 'confirm' / name / 'seed_0' / 'result.json'))[
      'steps'] == 40
  table = proc.stdout[proc.stdout.index('sweep confirm'):]
  assert [line.split()[0] for line in table.splitlines()[4:6]] == ['base', name]


@pytest.fixture(scope='module')
def slurm_cluster():
  problem = slurm_cluster_problem()
  if problem:
    pytest.fail(problem)


def test_two_trials_as_slurm_jobs_share_one_study(slurm_cluster, tmp_path):
  path = write_search(tmp_path / 'crop.py', space=CROP_SPACE, sampler='random',
                      overrides={'total_steps': 6, 'slurm.partition': 'debug',
                                 'slurm.cpus_per_task': 1}, trials=2)
  directory = tmp_path / 's'
  proc = launch('search', path, '--workdir', directory, '--launcher', 'slurm',
                '--parallel', 2)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  trials = trials_of(directory)
  assert [t.number for t in trials] == [0, 1]
  jobs = {t.user_attrs['slurm_job'] for t in trials}
  assert len(jobs) == 2
  for t in trials:
    # Each job's trainer reported its evaluations into the one journal.
    assert t.state.name in ('COMPLETE', 'PRUNED') and 2 in t.intermediate_values
    assert f'[trial_{t.number:03d}] started (SLURM job {t.user_attrs["slurm_job"]})' in proc.stdout
  assert jobs <= set(os.listdir(directory / 'slurm'))       # submitit's folder per job
