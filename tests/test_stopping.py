"""Ctrl-C and SIGTERM at any moment are an ordinary interruption: while the
process starts, while it compiles, twice while it saves, and while a sweep
starts a run. Each ends with one line and exit status 4, no traceback, and
the rerun goes on."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, TINY_CONFIG, cli_environment as _cli_environment

from inception_jax import checkpointing, rundir

PREEMPTED = 4
pytestmark = pytest.mark.xdist_group('interrupts')


def start(tmp_path, *args, cache=None):
  """`python -m inception_jax ARGS` in its own process group (as in a
  terminal), output in tmp_path/log; `cache`: a JAX compilation cache of its
  own (an empty one makes the first compilation take seconds)."""
  env = _cli_environment({'JAX_COMPILATION_CACHE_DIR': str(cache)} if cache else None)
  log = open(tmp_path / 'log', 'w')
  return subprocess.Popen([sys.executable, '-m', 'inception_jax', *map(str, args)],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)


def wait_for(proc, tmp_path, condition, what, timeout=600):
  deadline = time.time() + timeout
  while not condition():
    assert proc.poll() is None, f'ended before {what}: ' + open(tmp_path / 'log').read()[-3000:]
    assert time.time() < deadline, f'no {what} in {timeout} s'
    time.sleep(0.02)


def finish(proc, tmp_path):
  try:
    proc.wait(timeout=300)
  finally:
    proc.kill()
  return open(tmp_path / 'log').read()


def assert_one_line(output, returncode, *, says):
  assert returncode == PREEMPTED, output[-3000:]
  for noise in ('Traceback', 'Segmentation fault', 'KeyboardInterrupt'):
    assert noise not in output, output[-3000:]
  errors = [l for l in output.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and says in errors[0], errors


def train_args(workdir, *extra):
  return ('train', '--config', TINY_CONFIG, '--workdir', workdir,
          '--config.total_steps=200', '--config.checkpoint_every_steps=0',
          '--config.tracking.tensorboard=false', *extra)


def logged(tmp_path, text):
  return lambda: text in open(tmp_path / 'log').read()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_first_compilation_is_an_interruption(tmp_path, sig):
  """Was: Ctrl-C there a segmentation fault (139), SIGTERM exit 143 without a
  word. Now the step compiling finishes, is saved, and the run stops."""
  workdir = tmp_path / 'run'
  proc = start(tmp_path, *train_args(workdir), cache=tmp_path / 'cold_cache')
  wait_for(proc, tmp_path, logged(tmp_path, 'compiling the train step'), 'compilation')
  os.killpg(proc.pid, sig)
  output = finish(proc, tmp_path)
  assert_one_line(output, proc.returncode, says=f'stopped by {sig.name} after step 1 of')
  manager = checkpointing.CheckpointManager(str(workdir), every_steps=0, keep=3)
  assert manager.latest_step() == 1
  manager.close()


def test_a_signal_while_starting_stops_before_the_first_step(tmp_path):
  """SIGTERM before the data is even open: nothing to save, one line, 4."""
  workdir = tmp_path / 'run'
  proc = start(tmp_path, *train_args(workdir))
  time.sleep(1.0)                       # importing JAX
  assert proc.poll() is None
  os.killpg(proc.pid, signal.SIGTERM)
  output = finish(proc, tmp_path)
  assert_one_line(output, proc.returncode, says='stopped by SIGTERM before training step 1')


def test_ctrl_c_twice_waits_for_the_save(tmp_path):
  """Was: exit 130 and two tracebacks. The second Ctrl-C (during the step's
  save) says the save is being finished; the run stops as after one."""
  workdir = tmp_path / 'run'
  proc = start(tmp_path, *train_args(workdir))
  steps = lambda: [r['step'] for r in rundir.read_metrics(str(workdir)) if 'train/loss' in r]
  wait_for(proc, tmp_path, lambda: len(steps()) >= 2, 'step 2')
  os.killpg(proc.pid, signal.SIGINT)
  wait_for(proc, tmp_path, logged(tmp_path, 'saving the checkpoint of step'), 'the save')
  os.killpg(proc.pid, signal.SIGINT)
  output = finish(proc, tmp_path)
  assert_one_line(output, proc.returncode, says='stopped by SIGINT after step')
  assert 'finishing the step and its checkpoint first' in output
  step = int([l for l in output.splitlines() if l.startswith('error:')][0]
             .split('after step ')[1].split()[0])
  manager = checkpointing.CheckpointManager(str(workdir), every_steps=0, keep=3)
  assert manager.latest_step() == step
  manager.close()


def test_ctrl_c_while_a_sweep_starts_a_run_is_an_interruption(tmp_path):
  """Was: the run recorded failed and the sweep's exit status 1."""
  sweep_file = tmp_path / 'one.py'
  sweep_file.write_text(
      'def get_sweep(arg=None):\n'
      f'  return [dict(name="a", config={TINY_CONFIG!r}, '
      "overrides={'total_steps': 200, 'tracking.tensorboard': False})]\n")
  directory = tmp_path / 'out'
  proc = start(tmp_path, 'sweep', sweep_file, '--workdir', directory)
  wait_for(proc, tmp_path, logged(tmp_path, '[a] started'), 'the run start')
  os.killpg(proc.pid, signal.SIGINT)
  output = finish(proc, tmp_path)
  assert proc.returncode == PREEMPTED, output[-3000:]
  assert 'Traceback' not in output
  status = json.load(open(directory / 'sweep.json'))['status']['a']
  assert status['state'] == 'interrupted', status
