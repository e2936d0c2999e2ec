"""What the tests share: the tiny configuration, the XLA flags a test
process compiles with, ways to run the command line in a process of its own,
and a sweep launcher that trains nothing. Imports no JAX at module level:
conftest.py imports FAST_COMPILE from here before JAX first loads, to set
XLA_FLAGS."""

import importlib.metadata
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = 'configs/inception_v3.py:scale=tiny'    # 6 steps of a 4-channel network
TINY = dict(width_multiplier=0.05, min_depth=4, modules_per_grid=(1, 1, 1))   # as its config


def _compilation_cache():
  """JAX's persistent compilation cache, which tests and the runs they start
  share (conftest.py sets it before JAX loads)."""
  return os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
      os.environ.get('TMPDIR', '/tmp'), 'inception_jax_test_jax_cache')


def _xla_knows(flag: str) -> bool:
  """Whether this jaxlib's XLA accepts `flag` (an unknown flag aborts the
  process that starts XLA): asked once per jaxlib version, in a process of
  its own, the answer kept next to the compilation cache."""
  cache = _compilation_cache()
  answer = os.path.join(cache, f'xla_knows_{flag.strip("-").replace("=", "_")}_'
                               f'{importlib.metadata.version("jaxlib")}')
  if not os.path.exists(answer):
    probe = subprocess.run(
        [sys.executable, '-c', 'import jax; jax.devices("cpu")'], capture_output=True,
        env=dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS='cpu'), timeout=300)
    os.makedirs(cache, exist_ok=True)
    with open(f'{answer}.{os.getpid()}', 'w') as f:      # whole, for the other workers
      f.write(str(probe.returncode == 0))
    os.replace(f.name, answer)
  with open(answer) as f:
    return f.read() == 'True'


# Compile for behaviour, not speed (benchmarks/ measures speed): XLA's
# lowest backend optimization level, and XLA:CPU's older fusion code
# generator where this XLA still has it. Cold, the tiny network's train
# step took 60 s at the default level, 35 s at level 0; one tiny training
# process compiles with 16 s of CPU instead of 25 s with the old generator.
# Every process a test starts inherits these flags.
OLD_FUSION_FLAG = '--xla_cpu_use_fusion_emitters=false'
OLD_FUSION = _xla_knows(OLD_FUSION_FLAG)
FAST_COMPILE = '--xla_backend_optimization_level=0' + (f' {OLD_FUSION_FLAG}' if OLD_FUSION else '')
# The opposite, for one jitted function of a test that runs it hundreds of
# times (`jax.jit(..., compiler_options=RUN_FAST)`): XLA's defaults.
RUN_FAST = {'xla_backend_optimization_level': 3,
            **({'xla_cpu_use_fusion_emitters': True} if OLD_FUSION else {})}


def assert_close_to_scale(actual, desired, rtol, name=''):
  """max |actual − desired| ≤ rtol · max |desired|: relative to the array's
  scale, so entries that pass near zero do not need an absolute tolerance."""
  import numpy as np
  actual, desired = np.asarray(actual), np.asarray(desired)
  assert actual.shape == desired.shape and actual.dtype == desired.dtype, name
  scale = max(float(np.abs(desired).max()), np.finfo(desired.dtype).tiny)
  error = float(np.abs(actual - desired).max()) / scale
  assert error <= rtol, f'{name}: relative difference {error:.2e} > {rtol:.0e}'


def run_cli(*args, devices=8, env=None, cwd=ROOT, timeout=900):
  """`python -m inception_jax ARGS` in a new process on `devices` simulated CPU
  devices: for what needs a process of its own (a device count, a signal, a
  kill, the exit of the interpreter)."""
  environ = cli_environment(env)
  environ['XLA_FLAGS'] = f'{FAST_COMPILE} --xla_force_host_platform_device_count={devices}'
  return subprocess.run([sys.executable, '-m', 'inception_jax', *map(str, args)],
                        cwd=cwd, env=environ, capture_output=True, text=True,
                        timeout=timeout)


def cli_environment(env=None):
  """This process's environment (and `env`), with the repository importable."""
  environ = dict(os.environ, **(env or {}))
  environ['PYTHONPATH'] = os.pathsep.join(filter(None, (ROOT, environ.get('PYTHONPATH'))))
  return environ


def slurm_cluster_problem(partition='debug'):
  """Why the SLURM tests cannot run, or None: they need a running cluster with a
  usable node in `partition` (`make test` starts one); they never start one."""
  try:
    proc = subprocess.run(['sinfo', '-h', '-p', partition, '-o', '%T'],
                          capture_output=True, text=True, timeout=60)
    answer = (proc.stdout + proc.stderr).strip()
  except (OSError, subprocess.TimeoutExpired) as e:
    answer = str(e)
  if {'idle', 'mixed', 'allocated', 'completing'} & set(answer.split()):
    return None
  return (f'no SLURM cluster answers with a usable node in partition {partition} '
          f'(sinfo: {answer or "no nodes"}); start one as root: '
          'bash scripts/slurm_local.sh start --install')


def start_cli(*args, log, **popen):
  """`python -m inception_jax ARGS` started in the background (this process's
  8 devices), its output in the open file `log`: for a test that signals or
  kills it."""
  return subprocess.Popen([sys.executable, '-m', 'inception_jax', *map(str, args)],
                          cwd=ROOT, env=cli_environment(), stdout=log,
                          stderr=subprocess.STDOUT, **popen)


class FakeLauncher:
  """A sweep launcher that trains nothing: each run it is given ends 'done'
  with the config.json and result.json a finished run writes (top-1 error
  50 − seed %)."""

  def __init__(self):
    self.launched = []

  def launch(self, jobs, group, on_start, on_end):
    from inception_jax import rundir, sweep      # here: this module loads no JAX
    for run, workdir in jobs:
      self.launched.append((run.name, run.train_args(workdir, group)))
      on_start(run)
      config = run.build_config()
      os.makedirs(workdir, exist_ok=True)
      rundir.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
      rundir.write_json(os.path.join(workdir, 'result.json'), {
          'steps': 2, 'metrics': {'eval/top1_error': 50.0 - config.seed,
                                  'eval/top5_error': 10.0}})
      on_end(run, sweep.Outcome('done', 0))
