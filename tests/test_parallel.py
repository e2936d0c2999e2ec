"""Many processes: two processes of four CPU devices, joined through
`jax.distributed`, train as one process of eight devices does — started by
hand on localhost, and as a two-task SLURM job."""

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest
from helpers import FAST_COMPILE, ROOT, TINY_CONFIG, cli_environment as _cli_environment, slurm_cluster_problem

from inception_jax import cli, rundir

# One worker makes the reference run and both multi-process runs (they need
# both cores at once; two such tests side by side would starve each other).
pytestmark = pytest.mark.xdist_group('multiprocess')

# Three steps at a small learning rate (the processes' all-reduce sums in
# another order than one process's, so the runs may drift apart by rounding)
# with a checkpoint and an evaluation, both written by two processes at once.
OVERRIDES = {'total_steps': 3, 'log_every_steps': 1, 'checkpoint_every_steps': 2,
             'optim.learning_rate': 0.001}
FOUR_DEVICES = f'{FAST_COMPILE} --xla_force_host_platform_device_count=4'


def override_args(overrides):
  return [f'--config.{k}={v}' for k, v in overrides.items()]


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
  """The reference: this process, eight devices."""
  workdir = str(tmp_path_factory.mktemp('one_process') / 'run')
  assert cli.main(['train', '--config', TINY_CONFIG, '--workdir', workdir,
                   *override_args(OVERRIDES)]) == 0
  return workdir


def assert_trains_as(workdir, reference):
  """The same losses step by step, the same evaluation, and two processes."""
  result = json.load(open(os.path.join(workdir, 'result.json')))
  assert result['processes'] == 2 and result['devices'] == 8, result
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '3']
  rows = {r['step']: r for r in rundir.read_metrics(workdir) if 'train/loss' in r}
  expected = {r['step']: r for r in rundir.read_metrics(reference) if 'train/loss' in r}
  assert sorted(rows) == sorted(expected) == [1, 2, 3]
  for step, row in rows.items():
    assert abs(row['train/loss'] - expected[step]['train/loss']) < 1e-4, (step, row, expected)
  ours = json.load(open(os.path.join(reference, 'result.json')))['metrics']
  for key in ('eval/loss', 'eval/top1_error', 'eval_raw/loss'):
    assert abs(result['metrics'][key] - ours[key]) < 1e-4, (key, result['metrics'], ours)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_on_localhost_train_as_one(one_process, tmp_path):
  """JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, as one
  would start processes by hand on two hosts."""
  workdir = str(tmp_path / 'run')
  env = _cli_environment({'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{free_port()}',
                          'JAX_NUM_PROCESSES': '2', 'XLA_FLAGS': FOUR_DEVICES})
  processes = []
  with contextlib.ExitStack() as logs:
    for index in range(2):
      log = logs.enter_context(open(tmp_path / f'process{index}.log', 'w'))
      processes.append(subprocess.Popen(
          [sys.executable, '-m', 'inception_jax', 'train', '--config', TINY_CONFIG,
           '--workdir', workdir, *override_args(OVERRIDES)],
          cwd=ROOT, env=dict(env, JAX_PROCESS_ID=str(index)), stdout=log,
          stderr=subprocess.STDOUT))
    try:
      codes = [p.wait(timeout=900) for p in processes]
    finally:
      for p in processes:
        p.kill()
  logs = '\n'.join((tmp_path / f'process{i}.log').read_text()[-3000:] for i in range(2))
  assert codes == [0, 0], logs
  assert_trains_as(workdir, one_process)


@pytest.fixture
def slurm_cluster():
  problem = slurm_cluster_problem()
  if problem:
    pytest.fail(problem)


def test_a_two_task_slurm_job_trains_as_one_process(one_process, slurm_cluster, tmp_path):
  """A sweep run of `slurm.tasks_per_node=2`: SLURM starts both tasks (srun),
  which find each other from SLURM's environment."""
  sweep = tmp_path / 'two_tasks.py'
  overrides = dict(OVERRIDES, **{'slurm.partition': 'debug', 'slurm.tasks_per_node': 2,
                                 'slurm.cpus_per_task': 1})
  sweep.write_text(f'def get_sweep(arg=None):\n'
                   f'  return [dict(name="run", config={TINY_CONFIG!r}, '
                   f'overrides={overrides!r})]\n')
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'inception_jax', 'sweep', str(sweep), '--workdir', str(out),
       '--launcher', 'slurm'],
      cwd=ROOT, env=_cli_environment({'XLA_FLAGS': FOUR_DEVICES}), capture_output=True,
      text=True, timeout=900, check=False)
  logs = '\n'.join(p.read_text()[-3000:] for p in sorted((out / 'slurm').rglob('*.err')))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
  assert_trains_as(str(out / 'run'), one_process)
