"""Ordinary events that must lose nothing: a time limit, SLURM options left to
the cluster, a SLURM controller that does not answer, changed configs, bad
data, a full disk, Ctrl-C with worker processes (kills at any moment:
test_checkpointing.py; a rerun of a finished run: test_train.py)."""

import errno
import fcntl
import os
import re
import signal
import subprocess
import time

import pytest
from helpers import TINY_CONFIG, run_cli, start_cli

from inception_jax import checkpointing, config_lib, rundir, specs, sweep, tracking

PREEMPTED = 4


def train_steps(workdir):
  return [r['step'] for r in rundir.read_metrics(str(workdir)) if 'train/loss' in r]


def test_slurm_time_limit_signal_saves_and_exits_4(tmp_path):
  """SLURM warns a job with SIGUSR2 before its time limit (submitit asks for
  --signal=USR2@90): the run finishes its step, saves and exits 4 — resumable
  and reported as interrupted, not lost; its log says how it went."""
  workdir = tmp_path / 'run'
  with open(tmp_path / 'log', 'w') as log:
    proc = start_cli('train', '--config', TINY_CONFIG, '--workdir', workdir,
                     '--config.total_steps=200', '--config.checkpoint_every_steps=0',
                     '--config.tracking.tensorboard=false', log=log)
    try:
      deadline = time.time() + 600
      while len(train_steps(workdir)) < 2:
        assert proc.poll() is None and time.time() < deadline, open(tmp_path / 'log').read()
        time.sleep(0.05)
      proc.send_signal(signal.SIGUSR2)
      proc.wait(timeout=300)
    finally:
      proc.kill()
  output = open(tmp_path / 'log').read()
  assert proc.returncode == PREEMPTED, output[-3000:]
  message = [l for l in output.splitlines() if l.startswith('error:')]
  assert len(message) == 1 and 'stopped by SIGUSR2 after step' in message[0]
  step = int(message[0].split('after step ')[1].split()[0])
  manager = checkpointing.CheckpointManager(str(workdir), every_steps=0, keep=3)
  assert manager.latest_step() == step < 200
  manager.close()
  assert train_steps(workdir) == list(range(1, step + 1))
  # What SLURM's log file shows (no terminal, no progress bar): a line per
  # logging interval with the loss, the speed and the time left, and no
  # start-up noise from JAX looking for accelerators.
  assert re.search(r'step 1/200  loss [0-9.]+  [0-9.]+ images/s  \S+ left', output), output
  assert 'Unable to initialize backend' not in output


def test_ctrl_c_with_worker_processes_saves_and_exits_4(tmp_path):
  """Ctrl-C reaches the whole process group, Grain's worker processes
  (data.num_workers > 0) included: they leave it to the trainer, which saves
  and exits 4 with one line, and no worker prints a KeyboardInterrupt."""
  workdir = tmp_path / 'run'
  with open(tmp_path / 'log', 'w') as log:
    proc = start_cli('train', '--config', TINY_CONFIG, '--workdir', workdir,
                     '--config.total_steps=200', '--config.checkpoint_every_steps=0',
                     '--config.tracking.tensorboard=false', '--config.data.num_workers=2',
                     log=log, start_new_session=True)   # its own process group, as in a terminal
    try:
      deadline = time.time() + 600
      while not train_steps(workdir):
        assert proc.poll() is None and time.time() < deadline, open(tmp_path / 'log').read()
        time.sleep(0.05)
      os.killpg(proc.pid, signal.SIGINT)
      proc.wait(timeout=300)
    finally:
      proc.kill()
  output = open(tmp_path / 'log').read()
  assert proc.returncode == PREEMPTED, output[-3000:]
  for noise in ('Traceback', 'KeyboardInterrupt', 'leaked shared_memory'):
    assert noise not in output, output[-3000:]
  message = [l for l in output.splitlines() if l.startswith('error:')]
  assert len(message) == 1 and 'stopped by SIGINT after step' in message[0]
  step = int(message[0].split('after step ')[1].split()[0])
  manager = checkpointing.CheckpointManager(str(workdir), every_steps=0, keep=3)
  assert manager.latest_step() == step
  manager.close()


def test_zero_slurm_resources_leave_the_cluster_default():
  """`time_minutes=0` must not become `--time=0` (no limit at all), nor
  `cpus_per_task=0` an option: neither is passed to sbatch."""
  from submitit.slurm import slurm
  params = sweep.executor_parameters(specs.SlurmSpec(
      nodes=1, time_minutes=0, cpus_per_task=0, partition='', gpus_per_node=0, mem_gb=0))
  lines = slurm._make_sbatch_string(command='true', folder='/tmp/x', **params)
  options = [l.split()[1].split('=')[0] for l in lines.splitlines()
             if l.startswith('#SBATCH')]
  for option in ('--time', '--cpus-per-task', '--partition', '--mem'):
    assert option not in options
  params = sweep.executor_parameters(specs.SlurmSpec(
      nodes=2, time_minutes=90, cpus_per_task=4, partition='gpu', gpus_per_node=8, mem_gb=64))
  lines = slurm._make_sbatch_string(command='true', folder='/tmp/x', **params)
  for line in ('--time=90', '--cpus-per-task=4', '--partition=gpu', '--nodes=2',
               '--mem=64GB', '--ntasks-per-node=1'):
    assert f'#SBATCH {line}' in lines


@pytest.mark.parametrize('returncode,stderr,listed', [
    (1, 'slurm_load_jobs error: Unable to contact slurm controller', None),
    (1, 'slurm_load_jobs error: Invalid job id specified', False),
])
def test_a_failing_squeue_does_not_count_a_job_as_gone(monkeypatch, returncode,
                                                       stderr, listed):
  """A controller restart makes squeue fail: that says nothing about the job,
  which must not be marked failed (nor resubmitted beside itself)."""
  answer = subprocess.CompletedProcess([], returncode, stdout='', stderr=stderr)
  monkeypatch.setattr(sweep.subprocess, 'run', lambda *a, **k: answer)
  assert sweep.in_queue('42') is listed

  class Job:
    job_id = '42'
  monkeypatch.setitem(sweep._LEFT_QUEUE, '42', time.time() - 3600)   # "gone" for an hour
  assert sweep.vanished(Job()) is (listed is False)
  status = {'state': 'running', 'message': 'SLURM job 42'}
  assert sweep.SlurmLauncher.queued_job(status) == (None if listed is False else '42')


def test_a_shape_changing_override_is_refused_and_no_checkpoint_is_set_aside(
    tmp_path, cli_main):
  """A wider model (or another optimizer) cannot resume these checkpoints: the
  config check names the key before anything is read, and even with
  --allow_config_change the failed restore leaves every checkpoint in place.
  The same command without the override then resumes."""
  base = ['train', '--config', TINY_CONFIG, '--workdir', tmp_path,
          '--config.tracking.tensorboard=false', '--config.checkpoint_every_steps=2']
  assert cli_main(*base, '--config.total_steps=4')[0] == 0
  wider = '--config.model.width_multiplier=0.1'
  code, _, err = cli_main(*base, '--config.total_steps=6', wider)
  assert code == 2 and 'model.width_multiplier' in err and err.startswith('error:')
  code, _, err = cli_main(*base, '--config.total_steps=6', wider, '--allow_config_change')
  assert code == 2 and 'cannot restore the checkpoint at step 4' in err
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  assert not os.path.exists(tmp_path / 'checkpoints_damaged')
  code, _, err = cli_main(*base, '--config.total_steps=6')
  assert code == 0, err
  assert train_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
  assert rundir.read_json(str(tmp_path / 'result.json'))['resumed_from_step'] == 4


def test_hidden_folders_are_not_classes(tmp_path):
  """A notebook's .ipynb_checkpoints in train/ would become class 0 and shift
  every label; hidden folders are skipped."""
  from PIL import Image
  from inception_jax.data import sources
  for split in ('train', 'validation'):
    for name in ('cat', 'dog', '.ipynb_checkpoints'):
      os.makedirs(tmp_path / split / name)
      Image.new('RGB', (8, 8)).save(tmp_path / split / name / 'a.png')
  cfg = config_lib.load(TINY_CONFIG, {'data.name': 'folder', 'data.path': str(tmp_path)})
  source = sources.make_source(cfg.data, 'train')
  assert source.classes == ['cat', 'dog'] and source.num_classes == 2
  assert len(source) == 2


@pytest.mark.parametrize('seed', [-1, 2**32])
def test_a_seed_out_of_range_is_one_clear_line(tmp_path, cli_main, seed):
  code, _, err = cli_main('train', '--config', TINY_CONFIG, '--workdir', tmp_path,
                          f'--config.seed={seed}')
  assert code == 2 and err.startswith('error: seed must be in') and 'Traceback' not in err
  assert not os.listdir(tmp_path)


def test_a_filesystem_without_locks_is_one_line(tmp_path, cli_main, monkeypatch):
  """flock failing with ENOLCK (some network filesystems) is not "another
  process is training": one line saying what is wrong and what to do."""
  def no_locks(file, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
  monkeypatch.setattr(fcntl, 'flock', no_locks)     # as rundir.lock calls it
  workdir = tmp_path / 'run'
  code, out, err = cli_main('train', '--config', TINY_CONFIG, '--workdir', workdir)
  assert code == 2 and err.count('\n') == 1, err
  assert err == (f'error: cannot lock {workdir / ".lock"}: its filesystem does not '
                 f'support file locks (No locks available); use a directory on one '
                 f'that does, such as a local disk\n')
  assert os.listdir(workdir) == ['.lock']
  (tmp_path / 'one.py').write_text(f'def get_sweep(arg=None):\n'
                                   f'  return [dict(name="a", config="{TINY_CONFIG}")]\n')
  code, _, err = cli_main('sweep', tmp_path / 'one.py', '--workdir', tmp_path / 'sweep')
  assert code == 2 and err.startswith('error: cannot lock ') and err.count('\n') == 1


def _corrupt_folder(root, splits=('train', 'validation')):
  """A folder dataset of files that are not images."""
  for split in splits:
    for name in ('cat', 'dog'):
      os.makedirs(root / split / name)
      for i in range(4):
        (root / split / name / f'{i}.jpg').write_bytes(b'not an image')
  return root


def test_mistakes_found_before_training_are_one_line_each(tmp_path):
  """A missing or empty dataset folder, corrupt images (every one skipped with
  data.skip_corrupt: no endless search for a good one), a config the model
  refuses: each stops before compiling with one `error:` line on stderr and
  leaves nothing (a data mistake) or nothing but the lock behind: no
  checkpoints/, and no Orbax clean-up
  thread still running when the interpreter exits (its traceback would
  follow the error line)."""
  (tmp_path / 'empty' / 'train' / 'cat').mkdir(parents=True)
  corrupt = str(_corrupt_folder(tmp_path / 'corrupt'))
  folder = lambda path: ['--config.data.name=folder', f'--config.data.path={path}',
                         '--config.batch_size=8']
  cases = {
      'missing': (folder(tmp_path / 'nope'), 'does not exist'),
      'empty': (folder(tmp_path / 'empty'), 'holds no .jpg, .jpeg or .png images'),
      'corrupt': (folder(corrupt), 'cannot read'),
      'all_skipped': (folder(corrupt) + ['--config.data.skip_corrupt=true'],
                      f'every training image in {corrupt}/train failed to decode'),
      'model': (['--config.data.image_size=32'], 'the minimum is 75×75'),
      'synthetic': (['--config.data.object_size=(0.3,0.5)'], 'object_size must be'),
  }
  for name, (overrides, message) in cases.items():
    workdir = tmp_path / name / 'run'
    proc = run_cli('train', '--config', TINY_CONFIG, '--workdir', workdir, *overrides,
                   timeout=120)
    lines = [l for l in proc.stderr.splitlines()
             if not (name == 'all_skipped' and 'skipped corrupt image' in l)]
    assert proc.returncode == 2 and len(lines) == 1, (name, proc.stderr[-3000:])
    assert lines[0].startswith('error: ') and message in lines[0], (name, lines)
    # The data is checked before the run directory is made; the model after.
    assert os.listdir(workdir) == ['.lock'] if name == 'model' else not workdir.exists(), name


class _OnAFullDisk:
  """A file whose writes fail with ENOSPC once `full(text)` holds."""

  def __init__(self, file, full):
    self._file, self._full = file, full

  def write(self, text):
    if self._full(text):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return self._file.write(text)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._file.close()

  def __getattr__(self, name):
    return getattr(self._file, name)


def _fill_the_disk(monkeypatch, module, name, full):
  """The files called `name` that `module` opens run out of space once `full(text)`."""
  real_open = open

  def open_(path, *args, **kwargs):
    file = real_open(path, *args, **kwargs)
    return _OnAFullDisk(file, full) if os.path.basename(path) == name else file
  monkeypatch.setattr(module, 'open', open_, raising=False)


def test_a_full_disk_is_one_line_and_the_same_command_resumes(tmp_path, cli_main,
                                                                monkeypatch):
  """ENOSPC while logging step 4: one line naming the file, exit status 6, the
  rows and the checkpoint of step 2 intact; with space again, the same
  command resumes from that checkpoint and finishes."""
  _fill_the_disk(monkeypatch, tracking, rundir.METRICS,
                 lambda text: text.startswith('{"step": 4'))
  args = ['train', '--config', TINY_CONFIG, '--workdir', tmp_path,
          '--config.checkpoint_every_steps=2', '--config.tracking.tensorboard=false']
  code, _, err = cli_main(*args)
  assert code == 6, err[-3000:]
  assert err == (f'error: no space left on device while writing {tmp_path / rundir.METRICS}; '
                 f'free space and rerun the same command to resume\n')
  assert train_steps(tmp_path) == [1, 2, 3]
  assert os.listdir(tmp_path / 'checkpoints') == ['2']
  monkeypatch.undo()
  code, _, err = cli_main(*args)
  assert code == 0, err[-3000:]
  assert train_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
  assert rundir.read_json(str(tmp_path / rundir.RESULT))['resumed_from_step'] == 2


def test_a_full_disk_keeps_the_json_file_it_was_replacing(tmp_path, monkeypatch):
  """An atomic write that runs out of space leaves the old file whole and no
  temporary file, and names the file it was writing."""
  path = str(tmp_path / rundir.RESULT)
  rundir.write_json(path, {'old': True})
  _fill_the_disk(monkeypatch, rundir, rundir.RESULT + '.tmp', lambda text: True)
  with pytest.raises(rundir.DiskFull, match=f'while writing {path}; free space') as e:
    rundir.write_json(path, {'new': True})
  assert e.value.exit_code == 6
  assert rundir.read_json(path) == {'old': True} and os.listdir(tmp_path) == [rundir.RESULT]


def test_a_full_disk_as_orbax_reports_it_is_recognised():
  """Orbax's writer (TensorStore) reports ENOSPC as a ValueError."""
  orbax = ValueError('RESOURCE_EXHAUSTED: Error writing local file "ckpt/_sharding": '
                     "Failed to write 432117 bytes to file 9: No space left on device "
                     "[os_error_code='28']")
  assert rundir.is_disk_full(orbax)
  assert rundir.is_disk_full(OSError(errno.EDQUOT, 'Disk quota exceeded'))
  assert not rundir.is_disk_full(OSError(errno.EACCES, 'Permission denied'))
  with pytest.raises(rundir.DiskFull, match='while writing ckpt; free space'):
    with rundir.writing('ckpt'):
      raise orbax
