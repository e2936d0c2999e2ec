"""`sweep` and `compare`: failures reported while the others go on,
finished runs skipped, interrupted sweeps resumed, one sweep per directory,
stale runs reported and retrained on request, TensorBoard HParams and wandb
groups, and a two-run sweep on a real single-node SLURM cluster."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, TINY_CONFIG, FakeLauncher, slurm_cluster_problem

from inception_jax import config_lib, report, rundir, specs, sweep

TINY = TINY_CONFIG


def launch(*args, timeout=900, cwd=ROOT):
  """`launch.py ARGS`, the checkout's script (`python -m inception_jax` is
  the same command line)."""
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args],
                        cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write_sweep(path, runs):
  path.write_text(f'RUNS = {runs!r}\n\n'
                  'def get_sweep(arg=None):\n  return RUNS\n')
  return str(path)


def states(directory):
  status = json.load(open(os.path.join(directory, 'sweep.json')))['status']
  return {name: s['state'] for name, s in status.items()}


@pytest.fixture(scope='module')
def failing_sweep(tmp_path_factory):
  """Three tiny runs, two at a time: the first over two seeds, the second
  with an unknown override."""
  tmp = tmp_path_factory.mktemp('sweep')
  path = write_sweep(tmp / 'three.py', [
      dict(name='first', config=TINY, overrides={'total_steps': 2}, seeds=[0, 1]),
      dict(name='broken', config=TINY, overrides={'optim.no_such_key': 1}),
      dict(name='third', config=TINY,
           overrides={'total_steps': 3}),
  ])
  # Started from another directory with a relative --workdir: the runs train
  # in that directory's out/, not in the repository's.
  workdir = str(tmp / 'out')
  return path, workdir, launch('sweep', path, '--workdir', 'out', '--parallel', '2',
                               cwd=tmp)


@pytest.mark.xdist_group('failing_sweep')
def test_a_failing_run_is_reported_and_the_others_complete(failing_sweep):
  _, workdir, proc = failing_sweep
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert states(workdir) == {'first/seed_0': 'done', 'first/seed_1': 'done',
                             'broken': 'failed', 'third': 'done'}
  for name, steps in (('first/seed_0', 2), ('first/seed_1', 2), ('third', 3)):
    assert json.load(open(os.path.join(workdir, name, 'result.json')))['steps'] == steps
    assert os.path.isfile(os.path.join(workdir, name, 'train.log'))
  for k in (0, 1):       # each seed trained with its own seed
    config = json.load(open(os.path.join(workdir, 'first', f'seed_{k}', 'config.json')))
    assert config['seed'] == k
  assert not os.path.exists(os.path.join(workdir, 'broken', 'result.json'))
  summary = proc.stdout
  assert "broken        failed       error: unknown config key 'optim.no_such_key'" in summary
  assert '3 done, 1 failed' in summary
  assert '1 run(s) failed' in proc.stderr
  # The comparison table ends the output: one row per run.
  table = summary[summary.index('sweep three'):]
  assert [line.split()[0] for line in table.splitlines()[4:7]] == ['first', 'broken', 'third']


@pytest.mark.xdist_group('failing_sweep')
def test_rerun_skips_finished_runs(failing_sweep):
  path, workdir, _ = failing_sweep
  start = time.time()
  proc = launch('sweep', path, '--workdir', workdir, '--only', 'first,third')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert time.time() - start < 60          # nothing trained, nothing compiled
  for name in ('first/seed_0', 'first/seed_1', 'third'):
    assert f'[{name}] skipped' in proc.stdout
  assert '3 skipped' in proc.stdout
  proc = launch('sweep', path, '--workdir', workdir, '--only', 'nope')
  assert proc.returncode == 2 and 'no run named nope' in proc.stderr


@pytest.mark.xdist_group('failing_sweep')
def test_every_compare_format(failing_sweep, cli_main):
  _, workdir, _ = failing_sweep
  results = {name: [json.load(open(os.path.join(workdir, name, d, 'result.json')))
                    for d in dirs]
             for name, dirs in (('first', ['seed_0', 'seed_1']), ('third', ['']))}
  _, text, _ = cli_main('compare', workdir)
  assert 'top-1 err' in text and 'broken' in text
  _, markdown, _ = cli_main('compare', workdir, '--format', 'markdown')
  table_lines = [l for l in markdown.splitlines() if l.startswith('|')]
  assert len(table_lines) == 5             # header, separator, three runs
  assert set(table_lines[1].replace('|', '').split()) <= {'---', '---:'}
  rows = json.loads(cli_main('compare', workdir, '--format', 'json')[1])
  assert [(r['name'], r['seeds']) for r in rows] == [('first', 2), ('broken', 0),
                                                     ('third', 1)]
  for row in rows:
    if row['name'] in results:
      errors = [r['metrics']['eval/top1_error'] for r in results[row['name']]]
      assert [s['top1_error'] for s in row['per_seed']] == pytest.approx(errors, abs=1e-3)
      assert row['top1_error_mean'] == pytest.approx(np.mean(errors), abs=1e-3)
      if len(errors) > 1:
        assert row['top1_error_std'] == pytest.approx(np.std(errors, ddof=1), abs=1e-3)
      assert row['params'] == results[row['name']][0]['params']
  assert cli_main('compare', workdir, '--format', 'html')[0] == 0
  page = open(os.path.join(workdir, 'report.html')).read()
  assert '<table' in page and 'data:image/png;base64,' in page
  code, _, err = cli_main('compare', os.path.join(workdir, 'missing'))
  assert code == 2 and err.startswith('error:')


@pytest.mark.xdist_group('failing_sweep')
def test_runs_share_a_wandb_group_and_tensorboard_hparams(failing_sweep):
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  from tensorboard.plugins.hparams import plugin_data_pb2
  _, workdir, _ = failing_sweep
  recorded = {}
  for name in ('first/seed_0', 'first/seed_1', 'third'):
    config = json.load(open(os.path.join(workdir, name, 'config.json')))
    assert config['tracking']['wandb_group'] == 'three'
    hparams = {}
    for events in glob.glob(os.path.join(workdir, name, 'events.*')):
      for event in EventFileLoader(events).Load():
        for value in event.summary.value:
          if value.metadata.plugin_data.plugin_name == 'hparams':
            data = plugin_data_pb2.HParamsPluginData.FromString(
                value.metadata.plugin_data.content)
            if data.HasField('session_start_info'):
              hparams = data.session_start_info.hparams
    recorded[name] = (hparams['total_steps'].number_value,
                      hparams['optim.learning_rate'].number_value)
  assert recorded == {'first/seed_0': (2, pytest.approx(0.045)),
                      'first/seed_1': (2, pytest.approx(0.045)),
                      'third': (3, pytest.approx(0.045))}


def test_an_interrupted_sweep_resumes(tmp_path):
  """SIGINT during the first run: it saves a checkpoint, the sweep stops
  (exit 4); the rerun resumes it from the checkpoint and trains the second."""
  path = write_sweep(tmp_path / 'pair.py', [
      dict(name='a', config=TINY, overrides={'total_steps': 20,
                                             'checkpoint_every_steps': 4}),
      dict(name='b', config=TINY, overrides={'total_steps': 2}),
  ])
  workdir = str(tmp_path / 'out')
  proc = subprocess.Popen([sys.executable, 'launch.py', 'sweep', path, '--workdir', workdir],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  # 16 steps (≥ 2.5 s) remain after the checkpoint at step 4: poll often enough
  # that the signal arrives long before run a could finish.
  while not os.path.isdir(os.path.join(workdir, 'a', 'checkpoints', '4')):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 4, err[-3000:]
  assert states(workdir) == {'a': 'interrupted', 'b': 'pending'}
  assert 'rerun the same command' in err

  proc = launch('sweep', path, '--workdir', workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '[a] resuming' in proc.stdout
  result = json.load(open(os.path.join(workdir, 'a', 'result.json')))
  assert 4 <= result['resumed_from_step'] < 20
  steps = [r['step'] for r in rundir.read_metrics(os.path.join(workdir, 'a'))
           if 'train/loss' in r]
  assert steps == list(range(1, 21))
  assert states(workdir) == {'a': 'done', 'b': 'done'}


def fake_finished(directory, run):
  """`run` finished in DIRECTORY/NAME without training: its config.json (what
  the sweep file builds) and a result.json."""
  workdir = os.path.join(directory, run.name)
  os.makedirs(workdir)
  rundir.write_json(os.path.join(workdir, 'config.json'), run.build_config().to_dict())
  rundir.write_json(os.path.join(workdir, 'result.json'),
                    {'steps': 2, 'metrics': {'eval/top1': 0.5, 'eval/top5': 0.9}})
  return workdir


def test_a_second_sweep_on_the_same_directory_stops_at_once(tmp_path, cli_main):
  path = write_sweep(tmp_path / 'one.py', [dict(name='a', config=TINY)])
  workdir = tmp_path / 'out'
  fake_finished(workdir, sweep.load_sweep(path)[0])
  with sweep.lock_directory(str(workdir)):
    assert (workdir / '.sweep.lock').read_text() == f'{os.getpid()}\n'
    code, out, err = cli_main('sweep', path, '--workdir', workdir)
    assert (code, out) == (2, '')
    assert err == f'error: another sweep is running in {workdir} (pid {os.getpid()})\n'
    assert sorted(os.listdir(workdir)) == ['.sweep.lock', 'a']     # no sweep.json
    assert cli_main('compare', workdir)[0] == 0                     # reading needs no lock
  code, out, _ = cli_main('sweep', path, '--workdir', workdir)
  assert code == 0 and '[a] skipped: finished earlier' in out


def test_an_unwritable_sweep_directory_is_one_line(tmp_path, cli_main):
  path = write_sweep(tmp_path / 'one.py', [dict(name='a', config=TINY)])
  (tmp_path / 'afile').write_text('a file, not a directory')
  target = tmp_path / 'afile' / 'sweep'
  code, out, err = cli_main('sweep', path, '--workdir', target)
  assert (code, out) == (2, '')
  assert err == f'error: cannot write the sweep directory {target}: Not a directory\n'


def test_an_edited_finished_run_is_stale_until_rerun(tmp_path, cli_main):
  """A finished run whose overrides change in the sweep file: reported stale
  (exit 5), not retrained, marked in the table; `--rerun-stale` moves its
  directory aside and trains it again. Keys that cannot change the result
  (logging, tracking) do not make it stale."""
  runs = [dict(name='a', config=TINY, overrides={'total_steps': 2})]
  path = write_sweep(tmp_path / 'one.py', runs)
  workdir = tmp_path / 'out'
  old_result = open(os.path.join(fake_finished(workdir, sweep.load_sweep(path)[0]),
                                 'result.json')).read()

  runs[0]['overrides'].update({'log_every_steps': 5, 'tracking.tensorboard': False})
  write_sweep(tmp_path / 'one.py', runs)
  code, out, _ = cli_main('sweep', path, '--workdir', workdir)
  assert code == 0 and '[a] skipped: finished earlier' in out

  runs[0]['overrides']['total_steps'] = 3      # the same compiled program: no compile
  write_sweep(tmp_path / 'one.py', runs)
  code, out, err = cli_main('sweep', path, '--workdir', workdir)
  assert code == 5
  assert ('[a] stale: finished with a different config '
          '(total_steps: 2 -> 3)\n') in out
  assert err.startswith('error: 1 run(s) stale') and '--rerun-stale' in err
  assert states(workdir) == {'a': 'stale'}
  assert sorted(os.listdir(workdir / 'a')) == ['config.json', 'result.json']  # not started
  _, table, _ = cli_main('compare', workdir)
  assert 'a: stale: finished with a different config' in table
  assert 'its figures are those of the old config' in table

  code, out, err = cli_main('sweep', path, '--workdir', workdir, '--rerun-stale')
  assert code == 0, err
  moved = glob.glob(str(workdir / 'a.stale-*'))
  assert len(moved) == 1 and f'moved to {moved[0]}' in out
  assert open(os.path.join(moved[0], 'result.json')).read() == old_result
  assert json.load(open(workdir / 'a' / 'config.json'))['total_steps'] == 3
  assert json.load(open(workdir / 'a' / 'result.json'))['steps'] == 3
  assert states(workdir) == {'a': 'done'}
  code, out, _ = cli_main('sweep', path, '--workdir', workdir)   # what it recorded matches
  assert code == 0 and '[a] skipped: finished earlier' in out


def test_an_interrupted_run_under_a_changed_config_is_stale(tmp_path, cli_main):
  """A run with a checkpoint (no result) is stale for what the trainer would
  refuse to resume under, not for its length; --rerun-stale is the remedy."""
  runs = [dict(name='a', config=TINY, overrides={'total_steps': 8})]
  path = write_sweep(tmp_path / 'one.py', runs)
  workdir = tmp_path / 'out' / 'a'
  os.makedirs(workdir / 'checkpoints' / '4')
  rundir.write_json(str(workdir / 'config.json'),
                    sweep.load_sweep(path)[0].build_config().to_dict())
  longer = config_lib.load(TINY, {'total_steps': 20}).to_dict()
  assert sweep.config_changes(str(workdir), longer) == []
  runs[0]['overrides']['seed'] = 3
  write_sweep(tmp_path / 'one.py', runs)
  code, out, err = cli_main('sweep', path, '--workdir', workdir.parent, '--only', 'a')
  assert code == 5, err
  assert '[a] stale: interrupted with a different config (seed: 0 -> 3)\n' in out
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json']


def test_each_seed_is_a_run_directory(tmp_path):
  """A run with seeds trains once per seed in DIR/NAME/seed_K with that
  seed, recorded per seed, the seeds of all runs in seed-major order; a run
  without seeds stays DIR/NAME; a rerun
  skips each finished seed and --only selects every seed of a run."""
  path = write_sweep(tmp_path / 'two.py', [dict(name='a', config=TINY, seeds=[0, 2]),
                                           dict(name='b', config=TINY)])
  workdir = str(tmp_path / 'out')
  fake = FakeLauncher()
  outcomes = sweep.run_sweep(path, workdir, launcher=fake, echo=lambda _: None)
  assert list(outcomes) == ['a/seed_0', 'a/seed_2', 'b']
  # Seed-major: every run's first seed before any run's second.
  assert [r for r, _ in fake.launched] == ['a/seed_0', 'b', 'a/seed_2']
  for name, args in fake.launched:
    target = os.path.join(workdir, name)
    assert args[args.index('--workdir') + 1] == target
    seed = [a for a in args if a.startswith('--config.seed=')]
    assert seed == ([f'--config.seed={name[-1]}'] if name != 'b' else [])
    assert os.path.isfile(os.path.join(target, 'result.json'))
  assert json.load(open(os.path.join(workdir, 'a', 'seed_2', 'config.json')))['seed'] == 2
  assert states(workdir) == {'a/seed_0': 'done', 'a/seed_2': 'done', 'b': 'done'}
  record = json.load(open(os.path.join(workdir, 'sweep.json')))
  assert [(r['name'], r['seeds']) for r in record['runs']] == [('a', [0, 2]), ('b', None)]

  again, lines = FakeLauncher(), []
  outcomes = sweep.run_sweep(path, workdir, launcher=again, only='a', echo=lines.append)
  assert again.launched == [] and list(outcomes) == ['a/seed_0', 'a/seed_2']
  assert {o.state for o in outcomes.values()} == {'skipped'}
  assert '[a/seed_2] skipped: finished earlier' in lines
  rows = json.loads(report.format_json(report.collect(workdir)))
  assert [(r['name'], r['seeds']) for r in rows] == [('a', 2), ('b', 1)]
  assert rows[0]['top1_error_mean'] == pytest.approx(np.mean([50, 48]))
  assert rows[0]['top1_error_std'] == pytest.approx(np.std([50, 48], ddof=1))


def test_seeds_option_and_a_run_that_changes_layout(tmp_path, cli_main, monkeypatch):
  """`--seeds N` gives every run seeds 0 … N-1; a finished single-seed run
  then stands where its seeds would go: stale until --rerun-stale moves it."""
  fake = FakeLauncher()
  monkeypatch.setattr(sweep, 'LocalLauncher', lambda parallel: fake)
  path = write_sweep(tmp_path / 'two.py', [dict(name='a', config=TINY, seeds=[0, 2]),
                                           dict(name='b', config=TINY)])
  workdir = tmp_path / 'out'
  assert cli_main('sweep', path, '--workdir', workdir)[0] == 0
  fake.launched.clear()
  code, out, err = cli_main('sweep', path, '--workdir', workdir, '--seeds', '2')
  assert code == 5, err
  assert [name for name, _ in fake.launched] == ['a/seed_1']
  assert (f'[b] stale: {workdir}/b holds a single-seed run; the sweep now trains '
          f'seeds 0, 1 in it\n') in out
  assert states(workdir) == {'a/seed_0': 'done', 'a/seed_1': 'done',
                             'b/seed_0': 'stale', 'b/seed_1': 'stale'}
  assert sorted(os.listdir(workdir / 'b')) == ['config.json', 'result.json']
  fake.launched.clear()
  code, out, err = cli_main('sweep', path, '--workdir', workdir, '--seeds', '2',
                            '--rerun-stale')
  assert code == 0, err
  assert [name for name, _ in fake.launched] == ['b/seed_0', 'b/seed_1']
  moved = glob.glob(str(workdir / 'b.stale-*'))
  assert len(moved) == 1 and f'moved to {moved[0]}' in out
  assert sorted(os.listdir(moved[0])) == ['.lock', 'config.json', 'result.json']
  assert states(workdir) == {f'{n}/seed_{k}': 'done' for n in 'ab' for k in (0, 1)}
  # Back to the file's seeds: b is one run again, where its seeds now are.
  code, out, _ = cli_main('sweep', path, '--workdir', workdir)
  assert code == 5 and (f'[b] stale: {workdir}/b holds runs of seeds 0, 1; the sweep '
                        f'now trains one run there') in out


@pytest.mark.parametrize('seeds, option, message', [
    (None, '0', "--seeds takes a number of seeds >= 1, got '0'"),
    (None, '-2', "--seeds takes a number of seeds >= 1, got '-2'"),
    (None, 'two', "--seeds takes a number of seeds >= 1, got 'two'"),
    ([0, 1, 1], None, 'run a: duplicate seeds in [0, 1, 1]'),
    ([0, -1], None, 'run a: seeds must be a non-empty list of integers >= 0, got [0, -1]'),
    ([], None, 'run a: seeds must be a non-empty list of integers >= 0, got []'),
    (3, None, 'run a: seeds must be a non-empty list of integers >= 0, got 3'),
])
def test_bad_seeds_are_one_line(tmp_path, cli_main, seeds, option, message):
  run = dict(name='a', config=TINY) if seeds is None else dict(name='a', config=TINY,
                                                             seeds=seeds)
  path = write_sweep(tmp_path / 'one.py', [run])
  args = ['sweep', path, '--workdir', tmp_path / 'out'] + (['--seeds', option]
                                                           if option else [])
  code, out, err = cli_main(*args)
  assert (code, out, err.count('\n')) == (2, '', 1)
  assert err.startswith('error: ') and err.rstrip().endswith(message), err
  assert not os.path.exists(tmp_path / 'out')


def test_seeds_and_a_seed_override_are_one_or_the_other(tmp_path, cli_main):
  path = write_sweep(tmp_path / 'one.py', [dict(name='a', config=TINY, seeds=[0, 1],
                                                overrides={'seed': 3})])
  code, _, err = cli_main('sweep', path, '--workdir', tmp_path / 'out')
  assert code == 2 and err.rstrip().endswith(
      'run a overrides seed and has seeds; give one or the other')


@pytest.fixture(scope='module')
def slurm_cluster():
  """A running SLURM cluster (`make test` starts one on localhost); without
  one the SLURM tests fail, naming the command that starts it."""
  problem = slurm_cluster_problem()
  if problem:
    pytest.fail(problem)


def test_sweep_on_slurm(slurm_cluster, tmp_path):
  path = write_sweep(tmp_path / 'pair.py', [
      dict(name=name, config=TINY,
           overrides={'total_steps': steps, 'slurm.partition': 'debug',
                      'slurm.cpus_per_task': 1})
      for name, steps in (('one', 2), ('two', 3))])
  workdir = str(tmp_path / 'out')
  proc = launch('sweep', path, '--workdir', workdir, '--launcher', 'slurm')
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for name, steps in (('one', 2), ('two', 3)):
    result = json.load(open(os.path.join(workdir, name, 'result.json')))
    assert result['steps'] == steps
  # One job array: job ids ARRAY_0 and ARRAY_1.
  logs = sorted(os.path.basename(p) for p in glob.glob(
      os.path.join(workdir, 'slurm', '*', '*_log.out')))
  assert len(logs) == 2 and logs[0].split('_')[0] == logs[1].split('_')[0], logs
  assert '[one] started (SLURM job' in proc.stdout
  assert states(workdir) == {'one': 'done', 'two': 'done'}


def test_slurm_time_limit_warning_interrupts_the_run_and_the_rerun_resumes(
    slurm_cluster, tmp_path):
  """SLURM warns a job before its time limit with SIGUSR2 (submitit asks for
  --signal=USR2@90); here the cluster sends it at once (`scancel --signal`).
  The run saves and exits 4, the sweep records it interrupted (not failed),
  and the same sweep command resumes it from that checkpoint."""
  path = write_sweep(tmp_path / 'one.py', [
      dict(name='long', config=TINY,
           overrides={'total_steps': 40, 'checkpoint_every_steps': 0,
                      'slurm.partition': 'debug', 'slurm.cpus_per_task': 1})])
  workdir = str(tmp_path / 'out')
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch.py'), 'sweep', path,
                           '--workdir', workdir, '--launcher', 'slurm'], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  train_rows = lambda: [r for r in rundir.read_metrics(os.path.join(workdir, 'long'))
                        if 'train/loss' in r]
  deadline = time.time() + 600
  while len(train_rows()) < 2:
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.05)
  job = json.load(open(os.path.join(workdir, 'sweep.json')))['status']['long']['message']
  assert job.startswith('SLURM job '), job
  subprocess.run(['scancel', '--signal=USR2', job.split()[-1]], check=True, timeout=60)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 4, out[-3000:] + err[-3000:]
  assert states(workdir) == {'long': 'interrupted'}
  stopped = len(train_rows())
  assert 2 <= stopped < 40

  proc = launch('sweep', path, '--workdir', workdir, '--launcher', 'slurm')
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.load(open(os.path.join(workdir, 'long', 'result.json')))
  assert result['resumed_from_step'] == stopped
  assert [r['step'] for r in train_rows()] == list(range(1, 41))
  assert states(workdir) == {'long': 'done'}


def test_slurm_resources_come_from_the_config():
  config = config_lib.load('configs/inception_v3.py', {'slurm.nodes': 4,
                                                       'slurm.partition': 'gpu'})
  params = sweep.executor_parameters(specs.RunSpec.from_config(config).slurm)
  assert params['nodes'] == 4 and params['ntasks_per_node'] == 1
  tasks = config_lib.load('configs/inception_v3.py', {'slurm.tasks_per_node': 2})
  assert sweep.executor_parameters(specs.RunSpec.from_config(tasks).slurm)['ntasks_per_node'] == 2
  assert params['gpus_per_node'] == 8 and params['partition'] == 'gpu'
  assert params['time'] == 72 * 60 and params['cpus_per_task'] == 16


def test_a_run_whose_slurm_job_is_still_queued_is_not_resubmitted(slurm_cluster, tmp_path):
  """After an interrupted `--launcher slurm` sweep its jobs go on; a rerun
  must not start a second job on the same run directory."""
  path = write_sweep(tmp_path / 'one.py', [
      dict(name='x', config=TINY, overrides={'slurm.partition': 'debug'})])
  workdir = tmp_path / 'out'
  workdir.mkdir()
  # Its log in tmp_path: without --output sbatch writes slurm-JOB.out into the
  # working directory, the repository.
  job = subprocess.run(['sbatch', '--parsable', '-p', 'debug', '--wrap', 'sleep 120',
                        '--output', str(tmp_path / 'sleep-%j.out')],
                       capture_output=True, text=True, check=True).stdout.strip()
  try:
    (workdir / 'sweep.json').write_text(json.dumps(
        {'status': {'x': {'state': 'running', 'message': f'SLURM job {job}'}}}))
    proc = launch('sweep', path, '--workdir', str(workdir), '--launcher', 'slurm',
                  timeout=120)
  finally:
    subprocess.run(['scancel', job])
  assert proc.returncode == 4, proc.stderr[-3000:]
  assert f'[x] not resubmitted: SLURM job {job} still queued' in proc.stdout
  assert not os.path.exists(workdir / 'x')


class _FakeJob:
  """What `_job_outcome` reads of a finished submitit job."""

  def __init__(self, *results, crash=None, stderr=''):
    self.job_id, self._results, self._crash, self._stderr = '7', results, crash, stderr

  def done(self):
    return True

  def results(self):           # one per task
    if self._crash:
      raise self._crash
    return list(self._results)

  def stderr(self):
    return self._stderr


def test_a_slurm_job_returns_its_exit_status_as_data(tmp_path):
  """The job's `train` exit status decides (the first of its tasks' that is not
  0): 0 with a result is done, 4 is interrupted (resumable), anything else (or
  a crash) failed."""
  (tmp_path / 'result.json').write_text('{}')
  assert sweep.job_outcome(_FakeJob({'exit_code': 0}), str(tmp_path)).state == 'done'
  os.remove(tmp_path / 'result.json')
  stopped = sweep.job_outcome(_FakeJob({'exit_code': 4}, stderr='error: stopped by '
                                        'SIGTERM after step 3\n'), str(tmp_path))
  assert (stopped.state, stopped.exit_code) == ('interrupted', 4)
  assert stopped.message == 'error: stopped by SIGTERM after step 3'
  assert sweep.job_outcome(_FakeJob({'exit_code': 2}), str(tmp_path)).state == 'failed'
  # A job of two tasks: one task interrupted is the run interrupted.
  two = sweep.job_outcome(_FakeJob({'exit_code': 0}, {'exit_code': 4}), str(tmp_path))
  assert (two.state, two.exit_code) == ('interrupted', 4)
  crashed = sweep.job_outcome(_FakeJob(crash=RuntimeError('boom\nKeyError: x')),
                               str(tmp_path))
  assert crashed.state == 'failed' and crashed.message == 'KeyError: x'


@pytest.mark.parametrize('scale, changes', [
    ('paper', []),      # drew nothing: the objects' size never applied
    ('demo', ['data.object_size: missing -> [0.3, 0.4]']),
])
def test_a_run_recorded_before_a_config_key_existed(tmp_path, scale, changes):
  """A run whose config.json predates `data.object_size` had the old objects
  (radius 0.16–0.26) in effect: unchanged where the key still holds that
  value, stale where the config now draws other objects."""
  config = config_lib.load(f'configs/inception_v3.py:scale={scale}').to_dict()
  recorded = json.loads(json.dumps(config))
  del recorded['config_version'], recorded['data']['object_size']   # written before both
  rundir.write_json(str(tmp_path / 'config.json'), recorded)
  rundir.write_json(str(tmp_path / 'result.json'), {'steps': 1, 'metrics': {}})
  assert sweep.config_changes(str(tmp_path), config) == changes


def test_each_run_is_labelled_for_the_dashboards(tmp_path):
  """Each run gets its name, row, tags (what its row changes against the
  first) and the sweep's varying keys as tracking overrides; a config
  written before those keys existed trains unlabelled instead of failing."""
  path = write_sweep(tmp_path / 'two.py', [
      dict(name='a', config=TINY, seeds=[0, 1]),
      dict(name='b', config=TINY, seeds=[0, 1], overrides={'optim.name': 'momentum'})])
  fake = FakeLauncher()
  sweep.run_sweep(path, str(tmp_path / 'out'), launcher=fake, echo=lambda _: None)
  configs = {name: json.load(open(tmp_path / 'out' / name / 'config.json'))['tracking']
             for name, _ in fake.launched}
  for name, tracking in configs.items():
    row = name.partition('/')[0]
    assert (tracking['run_name'], tracking['job_type']) == (name, row)
    assert tracking['hparams_first'] == ['optim.name', 'seed']
    assert tracking['tags'] == (['optim.name=momentum'] if row == 'b' else [])
  # A config file without the labelling keys (one written before them).
  old = tmp_path / 'old_config.py'
  old.write_text(
      'from inception_jax import config_lib\n'
      f'def get_config(arg=None):\n'
      f'  config = config_lib.load({os.path.join(ROOT, TINY)!r})\n'
      '  config.unlock()\n'
      '  for key in ("run_name", "job_type", "tags", "hparams_first"):\n'
      '    del config.tracking[key]\n'
      '  return config\n')
  path = write_sweep(tmp_path / 'old.py', [dict(name='a', config=str(old), seeds=[0, 1])])
  fake = FakeLauncher()
  outcomes = sweep.run_sweep(path, str(tmp_path / 'old_out'), launcher=fake,
                             echo=lambda _: None)
  assert {o.state for o in outcomes.values()} == {'done'}
  assert not any(a.startswith('--config.tracking.run_name') for _, args in fake.launched
                 for a in args)
