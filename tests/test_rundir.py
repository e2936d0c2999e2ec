"""Run directories: a sweep directory an earlier release wrote (resumed,
evaluated and compared by today's code), the `RunDir` paths and lock, the
config migrations, and the exit statuses."""

import json
import os
import shutil

import pytest

from inception_jax import rundir, sweep
from inception_jax.errors import ExitCode, UserError

from helpers import TINY_CONFIG

PREVIOUS = os.path.join(os.path.dirname(__file__), 'data', 'previous_release')
SWEEP_FILE = os.path.join(PREVIOUS, 'sweep_file.py')


@pytest.fixture
def previous(tmp_path):
  """A copy of the sweep directory commit 36b71cf wrote (README.md there):
  finished/seed_0 done at step 4, stopped/seed_0 stopped after step 2."""
  return shutil.copytree(os.path.join(PREVIOUS, 'sweep'), tmp_path / 'sweep')


def _runs() -> dict:
  """The sweep's runs as `sweep --seeds 1` trained them: NAME/seed_0."""
  return {r.name: r for run in sweep.load_sweep(SWEEP_FILE, seeds=[0])
          for r in run.per_seed()}


def test_a_previous_release_run_resumes_where_it_stopped(previous, cli_main):
  """The sweep file's runs are not stale against what the old release
  recorded (its configs migrate to today's keys), and the stopped run goes
  on from its step-2 checkpoint to step 4, as the sweep would train it."""
  runs = _runs()
  for name, run in runs.items():
    assert sweep.config_changes(str(previous / name), run.build_config().to_dict()) == []
  stopped = previous / 'stopped' / 'seed_0'
  code, _, err = cli_main('train', *runs['stopped/seed_0'].train_args(stopped, 'sweep_file'))
  assert code == 0, err
  result = rundir.read_json(str(stopped / 'result.json'))
  assert (result['steps'], result['resumed_from_step']) == (4, 2)
  assert [row['step'] for row in rundir.read_metrics(str(stopped))
          if 'train/loss' in row] == [1, 2, 3, 4]
  assert sorted(os.listdir(stopped / 'checkpoints')) == ['4']


def test_a_previous_release_run_evaluates(previous, cli_main):
  """`eval --workdir` restores the old checkpoint: the error it measures is
  the one the run recorded at its end."""
  finished = previous / 'finished' / 'seed_0'
  code, out, err = cli_main('eval', '--workdir', finished, '--json')
  assert code == 0, err
  recorded = rundir.read_json(str(finished / 'result.json'))['metrics']
  measured = json.loads(out)
  assert measured['examples'] == 32
  assert measured['top1_error'] == recorded['eval/top1_error']
  assert measured['top5_error'] == recorded['eval/top5_error']


def test_a_previous_release_sweep_compares(previous, cli_main):
  code, out, err = cli_main('compare', previous, '--format', 'json')
  assert code == 0, err
  rows = {row['name']: row for row in json.loads(out)}
  assert rows['finished']['state'] == 'done' and rows['stopped']['state'] == 'interrupted'
  assert rows['finished']['top1_error_mean'] == 93.75
  assert rows['stopped']['changes'] == {}      # the same config, read with today's keys


def test_a_run_directory_names_every_path(tmp_path):
  run = rundir.RunDir(str(tmp_path / 'run'))
  names = {'config': 'config.json', 'metrics': 'metrics.jsonl', 'result': 'result.json',
           'classes': 'classes.json', 'checkpoints': 'checkpoints',
           'checkpoints_damaged': 'checkpoints_damaged',
           'checkpoints_discarded': 'checkpoints_discarded', 'log': 'train.log',
           'lock_file': '.lock', 'hparams_events': 'events.out.tfevents.0.hparams',
           'wandb': 'wandb', 'profile': 'profile'}
  for attribute, name in names.items():
    assert getattr(run, attribute) == os.path.join(run.path, name), attribute
  assert run.wandb_run_id == os.path.join(run.path, 'wandb', 'run_id')
  assert run.seed(3) == rundir.RunDir(os.path.join(run.path, 'seed_3'))
  assert run.stale('T') == f'{run.path}.stale-T'
  assert run.discarded_result('T') == os.path.join(run.path, 'result.discarded-T.json')
  swept = rundir.SweepDir(str(tmp_path))
  assert (swept.record, swept.lock_file) == (str(tmp_path / 'sweep.json'),
                                              str(tmp_path / '.sweep.lock'))
  assert swept.run('a/seed_0') == rundir.RunDir(str(tmp_path / 'a' / 'seed_0'))


def test_a_run_directory_reads_and_writes_its_files(tmp_path):
  """config.json is written with today's config_version and read in today's
  form; result and metrics round-trip; state follows the files."""
  run = rundir.RunDir(str(tmp_path))
  assert run.read_config() is None and run.read_result() is None
  assert not run.finished() and not run.holds_run() and not run.has_checkpoint()
  run.write_config({'seed': 1, 'data': {'color_distort': 'none'}})
  recorded = rundir.read_json(run.config)
  assert recorded['config_version'] == rundir.CONFIG_VERSION and recorded['seed'] == 1
  assert run.read_config() == rundir.as_current(recorded) and run.holds_run()
  run.write_result({'steps': 4})
  assert run.read_result() == {'steps': 4} and run.finished()
  with open(run.metrics, 'w') as f:
    f.write('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/lo')     # cut by a kill
  assert run.read_metrics() == [{'step': 1, 'train/loss': 2.0}]
  os.makedirs(os.path.join(run.checkpoints, 'tmp-unfinished'))
  assert not run.has_checkpoint()
  os.makedirs(os.path.join(run.checkpoints, '2'))
  assert run.has_checkpoint()


def test_a_held_lock_is_one_message(tmp_path):
  """A run's lock or a sweep's, held by another process: one wording, with
  what the taker says to do; released on leaving."""
  run = rundir.RunDir(str(tmp_path))
  with run.lock(hint='wait for it'):
    with pytest.raises(rundir.LockHeld) as held:
      with run.lock(hint='wait for it'):
        pass
    assert str(held.value) == (f'another process is training in {tmp_path} '
                               f'(pid {os.getpid()}); wait for it')
    assert held.value.exit_code == ExitCode.USER_ERROR == 2
  with run.lock(), run.lock(enabled=False):       # free again; disabled takes none
    pass
  swept = rundir.SweepDir(str(tmp_path))
  with swept.lock():
    with pytest.raises(rundir.LockHeld, match=rf'^another sweep is running in {tmp_path} '
                                              rf'\(pid {os.getpid()}\)$'):
      swept.lock()


def test_a_read_only_run_directory_is_read_unlocked(tmp_path, monkeypatch):
  """A reader (eval) of a directory it may not write to takes no lock; a
  trainer cannot."""
  import builtins
  import errno
  real_open = builtins.open

  def read_only(path, mode='r', *args, **kwargs):
    if str(path).endswith('.lock'):
      raise PermissionError(errno.EACCES, 'Permission denied', str(path))
    return real_open(path, mode, *args, **kwargs)
  monkeypatch.setattr(builtins, 'open', read_only)
  run = rundir.RunDir(str(tmp_path))
  with run.lock(reading=True) as held:
    assert held is run
  with pytest.raises(PermissionError):
    with run.lock():
      pass


def test_config_migrations_bring_every_version_to_todays_form():
  """A config recorded without config_version is version 0: every step
  applies, and the result says today's version; a current one is unchanged;
  one from a newer release is refused in one line."""
  assert rundir.CONFIG_VERSION == len(rundir.MIGRATIONS) >= 1
  old = {'seed': 0, 'data': {'color_distort': False}, 'model': {}, 'optim': {}}
  read = rundir.as_current(old)
  assert read['config_version'] == rundir.CONFIG_VERSION
  assert read['data']['color_distort'] == 'none'                # once a bool
  assert read['data']['object_size'] == [0.16, 0.26]            # the old runs' objects
  assert read['model']['modules_per_grid'] == [3, 4, 2]
  assert old == {'seed': 0, 'data': {'color_distort': False}, 'model': {}, 'optim': {}}
  assert rundir.as_current(read) == read                        # idempotent
  # A key a step adds keeps the value a recorded config has.
  drawn = {'data': {'object_size': [0.3, 0.4]}}
  assert rundir.as_current(drawn)['data']['object_size'] == [0.3, 0.4]
  # A step applies only to configs of its version and before.
  current = {'config_version': rundir.CONFIG_VERSION, 'data': {'color_distort': False}}
  assert rundir.as_current(current)['data'] == {'color_distort': False}
  for newer in (rundir.CONFIG_VERSION + 1, 'one', -1):
    with pytest.raises(UserError, match='config_version'):
      rundir.as_current({'config_version': newer})


def test_config_version_is_no_change():
  """A run recorded before versions compares equal to today's config that
  says the version: neither a resume nor a sweep sees a change."""
  from inception_jax import checkpointing, config_lib
  current = config_lib.load(TINY_CONFIG).to_dict()
  recorded = {k: v for k, v in current.items() if k != 'config_version'}
  assert checkpointing.config_changes(recorded, current) == []
  assert rundir.changed_keys(recorded, rundir.versioned(current)) == []
  assert rundir.matches('config_version', rundir.NEUTRAL_KEYS)


def test_the_docs_list_every_exit_status():
  """docs/ARCHITECTURE.md's table of exit statuses is `ExitCode`, row for row."""
  import re
  docs = os.path.join(os.path.dirname(__file__), '..', 'docs', 'ARCHITECTURE.md')
  with open(docs) as f:
    rows = re.findall(r'^\| (\d+) \| `([A-Z_]+)` \|', f.read(), re.MULTILINE)
  assert [(int(code), name) for code, name in rows] == [(m.value, m.name) for m in ExitCode]
  assert len(set(ExitCode)) == len(ExitCode.__members__)       # no aliases
