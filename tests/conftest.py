"""Test setup: 8 simulated CPU devices and the Keras JAX backend, both set
before JAX or Keras is first imported."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('KERAS_BACKEND', 'jax')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests and the runs they start in subprocesses compile the same tiny
# programs many times: share compilations through JAX's persistent cache.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.environ.get('TMPDIR', '/tmp'), 'inception_jax_test_jax_cache'))

import jax  # noqa: E402
import pytest  # noqa: E402

from inception_jax import models  # noqa: E402

TINY = dict(width_multiplier=0.05, min_depth=4)


@pytest.fixture
def tiny_spec():
  """A factory: the `preset` at tiny width, with `overrides`."""
  def make(preset='inception_v3', **overrides):
    return models.preset(preset, **{**TINY, **overrides})
  return make


def pytest_report_header(config):
  return f'jax {jax.__version__}, devices: {jax.device_count()} × {jax.devices()[0].platform}'
