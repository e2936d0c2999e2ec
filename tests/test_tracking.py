"""Tracking: TensorBoard's HParams session from the start of a run (running,
failed, resumed and finished runs), wandb's mode and where it logs."""

import glob
import logging
import os
import subprocess
import sys

import pytest
from helpers import TINY_CONFIG

from inception_jax import config_lib, specs, tracking
from inception_jax.errors import ConfigError

TINY = TINY_CONFIG
TENSORBOARD = specs.TrackingSpec(wandb=False)         # TensorBoard (and JSONL) only
FAKE_KEY = 'f' * 40
RESULT = {'metrics': {'eval/top1_error': 75.0, 'eval/top5_error': 25.0, 'eval/loss': 2.0,
                      'eval_raw/top1_error': 80.0, 'eval_raw/top5_error': 30.0,
                      'eval_raw/loss': 2.1,
                      'train/loss': 1.5},
          'steps': 6}


def tensorboard_events(workdir):
  """Every event in WORKDIR, file by file in TensorBoard's (name) order."""
  from tensorboard.backend.event_processing.event_file_loader import (
      LegacyEventFileLoader)
  for path in sorted(glob.glob(os.path.join(workdir, '*tfevents*'))):
    yield from LegacyEventFileLoader(path).Load()


def hparams_records(workdir):
  """The HParams plugin's records in WORKDIR: (kind, data) in file order,
  kind one of 'experiment', 'session_start_info', 'session_end_info'."""
  from tensorboard.plugins.hparams import plugin_data_pb2
  records = []
  for event in tensorboard_events(workdir):
    for value in event.summary.value:
      if value.metadata.plugin_data.plugin_name == 'hparams':
        data = plugin_data_pb2.HParamsPluginData.FromString(
            value.metadata.plugin_data.content)
        records.append((data.WhichOneof('data'), data))
  return records


def the_session(workdir):
  """WORKDIR's one HParams session: (flattened config, metric names, ended);
  fails unless there is exactly one experiment, one start and at most one end."""
  records = hparams_records(workdir)
  kinds = [kind for kind, _ in records]
  assert kinds.count('experiment') == 1 and kinds.count('session_start_info') == 1, kinds
  assert kinds.count('session_end_info') <= 1, kinds
  data = dict(records)
  hparams = data['session_start_info'].session_start_info.hparams
  metrics = [m.name.tag for m in data['experiment'].experiment.metric_infos]
  ended = 'session_end_info' in data
  return hparams, metrics, ended


def scalars(workdir):
  """{tag: [(step, value), ...]} of every scalar in WORKDIR."""
  out = {}
  for event in tensorboard_events(workdir):
    for value in event.summary.value:
      if value.HasField('simple_value'):
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_hparams_session_starts_with_the_tracker_and_ends_with_the_run(tmp_path):
  workdir = str(tmp_path)
  config = {'total_steps': 6, 'optim': {'learning_rate': 0.045}}
  with tracking.Tracker(workdir, config, TENSORBOARD) as tracker:
    hparams, metrics, ended = the_session(workdir)     # a running run is in the tab
    assert hparams['total_steps'].number_value == 6
    assert hparams['optim.learning_rate'].number_value == pytest.approx(0.045)
    assert sorted(metrics) == sorted(RESULT['metrics']) and not ended
    tracker.log(6, {k: v for k, v in RESULT['metrics'].items() if k.startswith('eval')})
    tracker.finish(RESULT)
  assert the_session(workdir)[2]
  written = scalars(workdir)
  for name in metrics:     # the final values, under the declared names, once each
    assert written[name] == [(6, pytest.approx(RESULT['metrics'][name]))], name


def test_a_sweep_run_writes_hparams_without_the_tensorboard_package(tmp_path, monkeypatch,
                                                                     caplog):
  """`pip install .` brings tensorboardX, not TensorBoard (an extra): a sweep's
  run still writes its session, its swept keys first, only not marked."""
  import builtins
  real_import = builtins.__import__

  def no_tensorboard(name, *args, **kwargs):
    if name == 'tensorboard' or name.startswith('tensorboard.'):
      raise ImportError(f'No module named {name!r}')
    return real_import(name, *args, **kwargs)

  spec = specs.TrackingSpec(wandb=False, hparams_first=('optim.learning_rate', 'seed'))
  with monkeypatch.context() as patch, caplog.at_level(logging.INFO, 'inception_jax'):
    patch.setattr(builtins, '__import__', no_tensorboard)
    with tracking.Tracker(str(tmp_path), {'seed': 1, 'optim': {'learning_rate': 0.1}},
                          spec):
      pass
  assert 'tensorboard is not installed' in caplog.text
  hparams, _, _ = the_session(str(tmp_path))
  assert hparams['optim.learning_rate'].number_value == pytest.approx(0.1)
  experiment = dict(hparams_records(str(tmp_path)))['experiment'].experiment
  assert [i.name for i in experiment.hparam_infos][:2] == ['optim.learning_rate', 'seed']
  assert not any(i.differs for i in experiment.hparam_infos)


def test_tensorboard_logging_does_not_import_pytorch(tmp_path):
  """PyTorch is installed here (the interop tests), and tensorboardX would
  import it: seconds in every training process. The scalars still arrive."""
  script = ('import sys\n'
            'from inception_jax import specs, tracking\n'
            f'with tracking.Tracker({str(tmp_path)!r}, {{"seed": 0}},\n'
            '                      specs.TrackingSpec(wandb=False)) as tracker:\n'
            '  tracker.log(3, {"train/loss": 1.25})\n'
            'print("torch" in sys.modules)\n'
            'import torch\n'                     # and PyTorch is still importable
            'print(torch.ones(2).sum().item())\n')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        cwd=config_lib.ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ['False', '2.0']
  assert scalars(str(tmp_path)) == {'train/loss': [(3, 1.25)]}
  assert tracking._tensorboardx() is sys.modules['tensorboardX']


def test_a_resumed_run_keeps_one_session_with_its_current_config(tmp_path):
  """Interrupted, resumed, finished, then extended (total_steps raised) and
  finished again: one session all along, holding the config of the latest start."""
  workdir = str(tmp_path)
  for total, finish in ((6, False), (6, True), (10, True)):
    with tracking.Tracker(workdir, {'total_steps': total}, TENSORBOARD) as tracker:
      hparams, _, ended = the_session(workdir)
      assert hparams['total_steps'].number_value == total and not ended
      if finish:
        tracker.finish({**RESULT, 'steps': total})
    hparams, _, ended = the_session(workdir)
    assert hparams['total_steps'].number_value == total and ended == finish


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
  """A HOME of its own whose ~/.netrc holds a wandb key, WANDB_API_KEY set
  too and no other WANDB_* variable: wandb would go online if asked to."""
  import wandb
  wandb.teardown()                  # wandb reads its environment once per process
  for name in [n for n in os.environ if n.startswith('WANDB_')]:
    monkeypatch.delenv(name)
  home = tmp_path / 'home'
  home.mkdir()
  (home / '.netrc').write_text(
      f'machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n')
  (home / '.netrc').chmod(0o600)
  monkeypatch.setenv('HOME', str(home))
  monkeypatch.setenv('WANDB_API_KEY', FAKE_KEY)
  yield home
  wandb.teardown()


def offline_run_logged_where(workdir, caplog):
  """The one offline wandb run of `workdir` (with its data), logged in a line
  that names its directory and the `wandb sync` command."""
  runs = glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*'))
  assert len(runs) == 1 and glob.glob(os.path.join(runs[0], '*.wandb'))
  assert not glob.glob(os.path.join(workdir, 'wandb', 'run-*'))     # never online
  lines = [r.getMessage() for r in caplog.records
           if r.name == tracking.__name__ and runs[0] in r.getMessage()]
  assert len(lines) == 1 and f'wandb sync {runs[0]}' in lines[0]


def test_offline_mode_stays_offline_with_an_api_key(tmp_path, wandb_home, caplog):
  caplog.set_level(logging.INFO, logger=tracking.__name__)
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  with tracking.Tracker(workdir, {'seed': 0}, specs.TrackingSpec(
      tensorboard=False, wandb=True, wandb_mode='offline')) as tracker:
    tracker.log(1, {'train/loss': 2.0})
    tracker.finish(RESULT)
  offline_run_logged_where(workdir, caplog)
  assert (wandb_home / '.netrc').read_text().count('machine') == 1


def test_wandb_mode_variable_wins_over_the_config_with_a_log_line(
    tmp_path, wandb_home, monkeypatch, caplog):
  caplog.set_level(logging.INFO, logger=tracking.__name__)
  monkeypatch.setenv('WANDB_MODE', 'offline')
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  with tracking.Tracker(workdir, {'seed': 0}, specs.TrackingSpec(
      tensorboard=False, wandb=True, wandb_mode='online')) as tracker:
    tracker.finish(RESULT)
  offline_run_logged_where(workdir, caplog)
  assert 'WANDB_MODE=offline overrides tracking.wandb_mode=online' in caplog.text
  monkeypatch.setenv('WANDB_MODE', 'sometimes')
  with pytest.raises(ConfigError, match='WANDB_MODE must be one of offline, online'):
    specs.RunSpec.from_config(config_lib.load(TINY, ['tracking.wandb=true'])).check_process()


def test_online_without_a_network_is_one_warning_and_a_finished_run(
    tmp_path, wandb_home, cli_main, caplog):
  """This machine has no network: wandb cannot start online."""
  caplog.set_level(logging.INFO, logger=tracking.__name__)
  # (With ghost BatchNorm, groups of 4 examples across the 8 devices: the
  # sharded trainer runs it to the end.)
  code, _, err = cli_main('train', '--config', TINY, '--workdir', tmp_path,
                          '--config.total_steps=2', '--config.tracking.wandb=true',
                          '--config.tracking.wandb_mode=online',
                          '--config.tracking.wandb_init_timeout=2',
                          '--config.model.bn_group_size=4')
  assert code == 0, err[-3000:]
  assert os.path.isfile(tmp_path / 'result.json')
  assert 'Traceback' not in err
  ours = [r for r in caplog.records if r.name.startswith('inception_jax')]
  warnings = [r.getMessage() for r in ours if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and warnings[0].startswith('wandb did not start'), warnings
  assert '\n' not in warnings[0] and not any(r.exc_info for r in ours)


def test_an_unknown_wandb_mode_is_one_error_line_before_training(tmp_path, cli_main):
  workdir = tmp_path / 'run'
  code, _, err = cli_main('train', '--config', TINY, '--workdir', workdir,
                          '--config.tracking.wandb_mode=sometimes')
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: tracking.wandb_mode')
  assert 'offline, online, disabled' in lines[0] and "'sometimes'" in lines[0]
  assert not workdir.exists()


def test_a_full_disk_met_by_the_tensorboard_thread_stops_the_run(tmp_path, capsys):
  """Was a race: when TensorBoard's writer thread met the full disk first, it
  died (a thread traceback), its queue filled and the run hung for good. Now
  the next log call raises DiskFull (exit status 6), without a traceback."""
  import errno
  import threading
  from inception_jax import rundir
  hook = threading.excepthook
  tracker = tracking.Tracker(str(tmp_path), {'seed': 0}, TENSORBOARD)
  writer = tracker._tb._get_file_writer().event_writer._ev_writer       # noqa: SLF001

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  writer.write_event = writer.flush = full
  outcome = []

  def train():
    try:
      for step in range(1, 500):                 # far more than the queue holds
        tracker.log(step, {'train/loss': 1.0, 'train/lr': 0.1})
    except rundir.DiskFull as e:
      outcome.append(e)
    finally:
      tracker.close()
  thread = threading.Thread(target=train, daemon=True)
  thread.start()
  thread.join(timeout=60)
  assert not thread.is_alive(), 'the run hung on the dead writer thread'
  assert len(outcome) == 1 and outcome[0].exit_code == 6
  assert 'Traceback' not in capsys.readouterr().err
  assert threading.excepthook is hook            # the tracker's own hook is gone


def test_wandb_dying_while_the_run_trains_is_one_warning(tmp_path, wandb_home, caplog):
  """Was: its service process gone, the next wandb.log raised
  ConnectionResetError out of the training loop. Now one warning, and the
  run goes on with metrics.jsonl and TensorBoard."""
  import time
  import psutil
  from inception_jax import rundir
  caplog.set_level(logging.WARNING, logger=tracking.__name__)
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  with tracking.Tracker(workdir, {'seed': 0}, specs.TrackingSpec(
      tensorboard=False, wandb=True, wandb_mode='offline')) as tracker:
    tracker.log(1, {'train/loss': 2.0})
    service = [p for p in psutil.Process().children(recursive=True)
               if 'wandb' in ' '.join(p.cmdline())]
    assert service, 'no wandb service process'
    for process in service:
      process.kill()
    time.sleep(1)
    for step in range(2, 50):
      tracker.log(step, {'train/loss': 2.0})
    tracker.finish(RESULT)
  warnings = [r.getMessage() for r in caplog.records if 'wandb stopped working' in
              r.getMessage()]
  assert len(warnings) == 1
  assert [r['step'] for r in rundir.read_metrics(workdir)] == list(range(1, 50))
  assert os.path.exists(os.path.join(workdir, 'result.json'))
