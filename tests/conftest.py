"""Test setup, before JAX or Keras is first imported: 8 simulated CPU
devices, flags that make XLA compile quickly, JAX's persistent compilation
cache, and the Keras JAX backend; the fixtures, and the `slow` marker that
leaves the quick tier (`make test-quick`). What tests import is in helpers.py.

Test files are named after the module they test (`test_rundir.py`: `rundir.py`,
`test_preprocess_tf.py`: `preprocess.py` against TensorFlow); those about a
capability across modules after it (`test_faults.py`, `test_harness.py`,
`test_package.py`, `test_benchmarks.py`, `test_docs_*.py`, `test_slurm_local.py`)."""

import os

# Tests and the runs they start in subprocesses compile the same tiny
# programs many times: share compilations through JAX's persistent cache.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.environ.get('TMPDIR', '/tmp'), 'inception_jax_test_jax_cache'))
# Every compilation, however quick (the evaluation step, a pytree sum): with
# JAX's 1 s threshold a tiny run compiled about a second of them anew each time.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


# The flags come from helpers.py, which loads no JAX; JAX loads after them.
from helpers import FAST_COMPILE  # noqa: E402

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + FAST_COMPILE +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('KERAS_BACKEND', 'jax')
# A JAX_PLATFORMS already set wins: benchmarks/gpu/suite.sh runs a few tests
# on a GPU with JAX_PLATFORMS=cuda (the device count flag above is the CPU's).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

from helpers import TINY  # noqa: E402
from inception_jax import cli, models  # noqa: E402

cli.collect_less_often()      # tests trace as the command line does

# Left out of the quick tier (`make test-quick`, `-m 'not slow'`), the
# edit-test loop's ≤ 3 minutes on 2 cores: files whose tests start trainings in
# processes of their own, use SLURM or several processes, load a browser, build
# a wheel, or compare with TensorFlow, Keras or torch. `make test` runs all.
SLOW_FILES = {
    'test_benchmarks.py': 'Keras and torchvision peers',
    'test_checkpointing.py': 'killed and resumed training processes',
    'test_docs_site.py': 'mkdocs builds in processes of their own',
    'test_faults.py': 'training processes that fail on purpose',
    'test_gpu_suite.py': "the GPU suite's smoke mode: benchmarks, a training, pytest",
    'test_harness.py': 'pytest in a process of its own',
    'test_interop.py': 'TF-slim, Keras and torchvision references',
    'test_package.py': 'builds and installs a wheel',
    'test_parallel.py': 'several processes, SLURM',
    'test_prepare.py': 'TFDS preparation and trainings in processes',
    'test_preprocess_tf.py': 'TensorFlow references',
    'test_report.py': 'headless Chromium',
    'test_search.py': 'SLURM, killed drivers',
    'test_slurm_local.py': 'SLURM',
    'test_stopping.py': 'signalled training processes',
    'test_sweep.py': 'SLURM, sweeps of training processes',
    'test_tracking_dashboards.py': 'sweeps on a terminal, TensorBoard, wandb sync',
    'test_train_resume.py': 'training processes',
}
# Single tests of the other files that train, start a process, compile the
# full network or load TensorFlow.
SLOW_TESTS = {
    'test_blocks_registry.py::test_the_example_sweep_trains_the_notebooks_block',
    'test_config_checks.py::test_the_cli_stops_with_one_line_before_writing',
    'test_convolution.py::test_a_run_from_before_conv_impl_resumes',
    'test_convolution.py::test_a_run_records_the_implementation_it_used',
    'test_convolution.py::test_xla_convolutions_on_a_cpu_train_as_the_cpu_forms_do',
    'test_cost.py::test_cli_cost_json_from_another_directory',
    'test_docs_commands.py::test_the_readme_model_example_runs',
    'test_evaluate.py::test_a_read_only_run_can_be_evaluated_predicted_and_compared',
    'test_losses.py::test_matches_tensorflow_softmax_cross_entropy',
    'test_optim.py::test_chain_matches_tensorflow',
    'test_optim.py::test_schedule_matches_tensorflow_exponential_decay',
    'test_optim.py::test_update_ema_matches_tensorflow',
    'test_search_report.py::test_compare_on_a_search_directory',
    'test_tracking.py::test_online_without_a_network_is_one_warning_and_a_finished_run',
    'test_tracking.py::test_tensorboard_logging_does_not_import_pytorch',
    'test_train_accumulation.py::test_four_micro_batches_are_one_step_with_batchnorm_per_8',
}


@pytest.fixture
def cli_main(capsys):
  """`cli.main(ARGS)` in this process (8 devices): (exit status, stdout, stderr)."""
  def call(*args):
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
  return call


@pytest.fixture
def tiny_spec():
  """A factory: the `preset` at tiny width, with `overrides`."""
  def make(preset='inception_v3', **overrides):
    return models.preset(preset, **{**TINY, **overrides})
  return make


def pytest_report_header(config):
  return f'jax {jax.__version__}, devices: {jax.device_count()} × {jax.devices()[0].platform}'


def pytest_collection_modifyitems(config, items):
  """Marks the tests of SLOW_FILES and SLOW_TESTS `slow`."""
  listed = {*SLOW_FILES, *(test.split('::')[0] for test in SLOW_TESTS)}
  missing = sorted(name for name in listed
                   if not os.path.exists(os.path.join(os.path.dirname(__file__), name)))
  if missing:     # a renamed file would join the quick tier unnoticed
    raise pytest.UsageError(f'tests/conftest.py marks missing files slow: {", ".join(missing)}')
  for item in items:
    if (item.path.name in SLOW_FILES or
        f'{item.path.name}::{getattr(item, "originalname", item.name)}' in SLOW_TESTS):
      item.add_marker(pytest.mark.slow)
