"""config_checks: every config key has a rule (or a stated exemption), the
shipped configs keep them, and every rule refuses what it should with one
line naming the key."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_CONFIG, _cli_environment

from inception_jax import config_checks, config_lib, models
from inception_jax.errors import ConfigError

CONFIG = 'configs/inception_v3.py'
SCALES = ('paper', 'demo', 'tiny')


def _config_keys(arg):
  return {key for key, _ in config_checks.flatten(config_lib.load(f'{CONFIG}:{arg}'))}


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('model', sorted(models.PRESETS))
def test_every_key_has_a_rule_or_an_exemption(scale, model):
  """A new config key without a rule fails here: add it to RULES (or, with
  the reason, to EXEMPT)."""
  keys = _config_keys(f'scale={scale},model={model}')
  missing = sorted(keys - set(config_checks.RULES) - set(config_checks.EXEMPT))
  assert not missing, f'config keys with no rule in config_checks.RULES: {missing}'


def test_the_table_names_only_real_keys():
  known = set().union(*(_config_keys(f'scale={s}') for s in SCALES))
  assert not set(config_checks.RULES) & set(config_checks.EXEMPT)
  assert not (set(config_checks.RULES) | set(config_checks.EXEMPT)) - known


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('model', sorted(models.PRESETS))
def test_the_shipped_configs_pass(scale, model):
  config_checks.check(config_lib.load(f'{CONFIG}:scale={scale},model={model}'))


def _refused(config, key):
  with pytest.raises(ConfigError) as e:
    config_checks.check(config)
  message = str(e.value)
  assert message.startswith(f'{key} must be ') and '\n' not in message, message
  return message


def _cases(kind):
  return [pytest.param(key, value, id=f'{key}={value!r}')
          for key, rule in config_checks.RULES.items()
          for value in getattr(rule, kind)()]


@pytest.mark.parametrize('key,value', _cases('out_of_range'))
def test_an_out_of_range_value_is_one_line_naming_it(key, value):
  """Set as the command line sets it: `--config.KEY=VALUE`."""
  config = config_lib.load(TINY_CONFIG, [f'{key}={value!r}'])
  message = _refused(config, key)
  assert message.endswith(f'(got {_get(config, key)!r})'), message


@pytest.mark.parametrize('key,value', _cases('wrong_types'))
def test_a_value_of_the_wrong_type_is_one_line_naming_it(key, value):
  """A config file (or a sweep's Python overrides on an unlocked config) can
  hold any type; a bool is no number."""
  config = config_lib.load(TINY_CONFIG).to_dict()
  *path, leaf = key.split('.')
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value
  _refused(config, key)


def _get(config, key):
  for part in key.split('.'):
    config = config[part]
  return config


def test_every_rule_is_tested():
  """Each rule offers a wrong value (a free-form string: a wrong type)."""
  for key, rule in config_checks.RULES.items():
    assert rule.out_of_range() or rule.wrong_types(), key


@pytest.mark.parametrize('override,message', [
    ('data.crop_area_min=8', 'data.crop_area_min must be in (0, 1], a fraction, '
                             'not a percentage (got 8.0)'),
    ('loss.label_smoothing=10', 'loss.label_smoothing must be in [0, 1), a fraction, '
                                'not a percentage (got 10.0)'),
    ('optim.learning_rate=0', 'optim.learning_rate must be > 0 (got 0.0)'),
    ('optim.epsilon=inf', 'optim.epsilon must be a finite number > 0 (got inf)'),
    ('data.object_size=(0.3,0.2)', 'data.object_size must be a pair (low, high)'),
    ('batch_size=0', 'batch_size must be >= 1 (got 0)'),
    ('seed=-1', 'seed must be in [0, 2**32) (got -1)'),
    ('model.num_classes=0', "model.num_classes must be >= 1, or None for the dataset's"),
])
def test_the_issues_examples(override, message):
  with pytest.raises(ConfigError) as e:
    config_checks.check(config_lib.load(TINY_CONFIG, [override]))
  assert str(e.value).startswith(message), str(e.value)


def test_none_follows_the_dataset():
  config = config_lib.load(TINY_CONFIG)
  assert config.model.num_classes is None
  config_checks.check(config)


def test_the_cli_stops_with_one_line_before_writing(tmp_path):
  """`launch.py train` with a percentage for a fraction: exit 2, one
  `error:` line naming the key, no traceback, no workdir."""
  workdir = tmp_path / 'run'
  proc = subprocess.run(
      [sys.executable, 'launch.py', 'train', '--config', TINY_CONFIG,
       '--workdir', str(workdir), '--config.data.crop_area_min=8'],
      cwd=ROOT, env=_cli_environment(), capture_output=True, text=True, timeout=300)
  lines = proc.stderr.splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('error: data.crop_area_min must be in (0, 1]'), lines
  assert '8.0' in lines[0] and 'Traceback' not in proc.stderr
  assert not workdir.exists()
  assert not os.listdir(tmp_path)
