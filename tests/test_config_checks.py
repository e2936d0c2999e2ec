"""config_checks: every spec field has a rule (or a stated exemption), the
shipped configs keep them, and every rule refuses what it should with one
line naming the key when the config becomes a spec."""

import os
import subprocess
import sys

import pytest
from helpers import ROOT, TINY_CONFIG, cli_environment as _cli_environment

from inception_jax import config_checks, config_lib, models, rundir, specs
from inception_jax.errors import ConfigError

CONFIG = 'configs/inception_v3.py'
SCALES = ('paper', 'demo', 'tiny')


def _config_keys(arg):
  return set(rundir.flatten(config_lib.load(f'{CONFIG}:{arg}').to_dict()))


def test_every_spec_field_has_a_rule_or_an_exemption():
  """A new spec field without a rule fails here: add it to RULES (or, with
  the reason, to EXEMPT)."""
  missing = sorted(set(specs.known_keys()) - set(config_checks.RULES)
                   - set(config_checks.EXEMPT))
  assert not missing, f'spec fields with no rule in config_checks.RULES: {missing}'


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('model', sorted(models.PRESETS))
def test_every_config_key_is_a_spec_field(scale, model):
  keys = _config_keys(f'scale={scale},model={model}')
  assert not keys - set(specs.known_keys())


def test_the_table_names_only_real_keys():
  known = set(specs.known_keys())
  assert not set(config_checks.RULES) & set(config_checks.EXEMPT)
  assert not (set(config_checks.RULES) | set(config_checks.EXEMPT)) - known


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('model', sorted(models.PRESETS))
def test_the_shipped_configs_pass(scale, model):
  specs.RunSpec.from_config(config_lib.load(f'{CONFIG}:scale={scale},model={model}'))


def _refused(config, key):
  with pytest.raises(ConfigError) as e:
    specs.RunSpec.from_config(config)
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
    specs.RunSpec.from_config(config_lib.load(TINY_CONFIG, [override]))
  assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize('override,message', [
    ('total_steps=0', 'set total_steps > 0 or num_epochs > 0'),
    ('init_from=imagenet', "init_from must be 'run:DIR', 'keras'"),
    ('init_from=run:', "init_from must be 'run:DIR', 'keras'"),
    ('freeze=Mixed_[5', 'freeze is not a regular expression'),
    ('tracking.wandb_mode=sometimes', 'tracking.wandb_mode must be one of offline, online, '
                                      "disabled; got 'sometimes'"),
])
def test_what_depends_on_several_keys_or_a_form(override, message):
  """Checks beyond a key's type and range, made with the others."""
  overrides = [override, 'num_epochs=0'] if override == 'total_steps=0' else [override]
  with pytest.raises(ConfigError) as e:
    specs.RunSpec.from_config(config_lib.load(TINY_CONFIG, overrides))
  assert str(e.value).startswith(message) and '\n' not in str(e.value), str(e.value)


def test_none_follows_the_dataset():
  config = config_lib.load(TINY_CONFIG)
  assert config.model.num_classes is None
  spec = specs.RunSpec.from_config(config)
  assert spec.model.num_classes is None and spec.model_spec(7).num_classes == 7


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
