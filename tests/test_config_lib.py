"""Config loading: arg strings, overrides, type checks and clear errors."""

import pytest
from helpers import TINY

from inception_jax import config_lib, models, sweep
from inception_jax.errors import ConfigError

CONFIG = 'configs/inception_v3.py'


def test_arg_selects_preset_and_scale():
  config = config_lib.load(f'{CONFIG}:model=inception_v2,scale=tiny')
  assert config.model.stem == '7x7' and config.model.aux_bn is False
  assert config.model.width_multiplier == 0.05 and config.data.image_size == 75
  paper = config_lib.load(CONFIG)
  # The preset's network, with BatchNorm as the paper's 50 replicas had it.
  assert paper.model.to_dict() == models.preset(
      'inception_v3', bn_group_size=32, bn_update_per_group=True, dtype='auto').to_dict()
  assert paper.data.image_size == 299 and paper.data.name == 'tfds:imagenet2012'
  assert config_lib.load(f'{CONFIG}:model=inception_v3_rf79').data.image_size == 79


def test_overrides_are_typed():
  config = config_lib.load(CONFIG, ['model.width_multiplier=0.5', 'model.aux_head=false',
                                    'data.image_size=151', 'model.blocks.grid_17=inception_b',
                                    'optim.learning_rate=1e-3'])
  assert config.model.width_multiplier == 0.5 and config.model.aux_head is False
  assert config.data.image_size == 151 and config.optim.learning_rate == 1e-3
  config = config_lib.load(CONFIG, {'optim.name': 'momentum'})
  assert config.optim.name == 'momentum'


@pytest.mark.parametrize('override,message', [
    ('model.nope=1', "unknown config key 'model.nope'"),
    ('nope.deeper=1', "has no 'nope'"),
    ('data.image_size=1.5', 'expected int'),
    ('model.aux_head=maybe', 'expected bool'),
    ('model.blocks=x', 'set its fields one by one'),
    ('model', 'KEY=VALUE'),
])
def test_bad_overrides(override, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.load(CONFIG, [override])


def test_bad_arg_and_file():
  with pytest.raises(ConfigError, match='KEY=VALUE with KEY in'):
    config_lib.load(f'{CONFIG}:colour=red')
  with pytest.raises(ConfigError, match='scale must be one of'):
    config_lib.load(f'{CONFIG}:scale=huge')
  with pytest.raises(ConfigError, match='not found'):
    config_lib.load('configs/nope.py')
  with pytest.raises(ConfigError, match="unknown model preset"):
    config_lib.load(f'{CONFIG}:model=inception_v9')


def test_table3_sweep_expands_to_the_five_rows():
  runs = sweep.load_sweep('sweeps/table3_ablation.py:scale=tiny')
  configs = {r.name: r.build_config() for r in runs}
  v2, rms, ls, f7, v3 = configs.values()
  assert v2.optim.name == 'momentum' and v2.loss.label_smoothing == 0.0
  assert rms.optim.name == 'rmsprop' and rms.loss.label_smoothing == 0.0
  assert ls.loss.label_smoothing == 0.1 and ls.model.stem == '7x7'
  assert f7.model.stem == 'factorized' and f7.model.aux_bn is False
  # At demo and tiny scale the number of classes follows the dataset.
  assert v3.model.aux_bn is True and v3.model.to_dict() == dict(
      models.preset('inception_v3', **TINY).to_dict(),
      num_classes=None)
  assert all(c.model.width_multiplier == 0.05 for c in configs.values())
