"""The specs: frozen, made once from a config with every default filled in,
every key known, the shipped config and the defaults agreeing, and a round
trip through the plain dict (config.json) that changes nothing."""

import dataclasses
import json

import pytest
from helpers import TINY_CONFIG

from inception_jax import config_lib, models, rundir, specs
from inception_jax.errors import ConfigError

CONFIG = 'configs/inception_v3.py'
SPECS = [specs.RunSpec, models.InceptionSpec, *specs.SECTIONS.values()]


def _tiny():
  return specs.RunSpec.from_config(config_lib.load(TINY_CONFIG))


@pytest.mark.parametrize('section', ['', 'model', *specs.SECTIONS])
def test_specs_are_frozen(section):
  spec = _tiny()
  target = getattr(spec, section) if section else spec
  name = dataclasses.fields(target)[0].name
  with pytest.raises(dataclasses.FrozenInstanceError):
    setattr(target, name, getattr(target, name))


def test_a_missing_key_takes_its_default():
  """A config that leaves keys out (an older or a hand-written one) gets the
  specs' defaults: whole sections, and single keys of a section."""
  config = config_lib.load(TINY_CONFIG).to_dict()
  del config['tracking'], config['profile_steps'], config['data']['prefetch']
  del config['model']['bn_scale'], config['optim']['warmup_epochs']
  spec = specs.RunSpec.from_config(config)
  assert spec.tracking == specs.TrackingSpec()
  assert spec.profile_steps == specs.RunSpec().profile_steps == 0
  assert spec.data.prefetch == specs.DataSpec().prefetch == 256
  assert spec.model.bn_scale is specs.RunSpec().model.bn_scale is False
  assert spec.optim.warmup_epochs == specs.OptimSpec().warmup_epochs
  assert spec.data.num_train == 256                    # what it holds, as given
  assert specs.RunSpec.from_config({}) == specs.RunSpec()


# (key set, key the message names, nearest known key it suggests)
@pytest.mark.parametrize('key,named,nearest', [
    ('data.crop_area', 'data.crop_area', 'data.crop_area_min'),
    ('learning_rate', 'learning_rate', 'optim.learning_rate'),
    ('model.blocks.grid35', 'model.blocks.grid35', 'model.blocks.grid_35'),
    ('colour', 'colour', None),
    ('slurms.nodes', 'slurms', 'slurm'),          # an unknown section, by its name
])
def test_an_unknown_key_is_one_line_naming_it(key, named, nearest):
  config = config_lib.load(TINY_CONFIG).to_dict()
  *path, leaf = key.split('.')
  node = config
  for part in path:
    node = node.setdefault(part, {})
  node[leaf] = 1
  with pytest.raises(ConfigError) as e:
    specs.RunSpec.from_config(config)
  message = str(e.value)
  assert message.startswith(f"unknown config key '{named}'") and '\n' not in message
  assert (f"did you mean '{nearest}'" in message) if nearest else 'mean' not in message


def test_a_spec_made_in_python_is_checked_too():
  with pytest.raises(ConfigError, match=r'data\.crop_area_min must be in \(0, 1\]'):
    specs.DataSpec(crop_area_min=8.0)
  with pytest.raises(ConfigError, match='set total_steps > 0 or num_epochs > 0'):
    specs.RunSpec(num_epochs=0.0)
  assert specs.TrackingSpec(tags=['a=1']).tags == ('a=1',)     # frozen: a tuple


def test_every_field_is_in_the_shipped_config_with_its_default():
  """`configs/inception_v3.py` at scale=paper sets every key, each to the
  specs' default: the defaults and the file the users read cannot drift."""
  shipped = rundir.flatten(rundir.jsonable(config_lib.load(CONFIG).to_dict()))
  defaults = rundir.flatten(rundir.jsonable(specs.RunSpec().to_dict()))
  assert sorted(defaults.keys() - shipped.keys()) == [], 'not in configs/inception_v3.py'
  assert sorted(shipped.keys() - defaults.keys()) == [], 'in no spec'
  differ = {k: (shipped[k], defaults[k]) for k in shipped if shipped[k] != defaults[k]}
  assert not differ, f'configs/inception_v3.py value vs the spec default: {differ}'


@pytest.mark.parametrize('scale', ['paper', 'demo', 'tiny'])
@pytest.mark.parametrize('model', sorted(models.PRESETS))
def test_config_spec_dict_spec_is_the_identity(scale, model):
  spec = specs.RunSpec.from_config(config_lib.load(f'{CONFIG}:scale={scale},model={model}'))
  assert specs.RunSpec.from_config(spec.to_dict()) == spec
  # As config.json records it (tuples as lists) and reads it back.
  recorded = json.loads(json.dumps(rundir.versioned(spec.to_dict())))
  assert specs.RunSpec.from_config(rundir.as_current(recorded)) == spec


def test_the_batch_as_devices_run_it_is_a_new_spec():
  spec = _tiny()
  moved = spec.with_batch(32, 2)
  assert (moved.batch_size, moved.optim.grad_accum_steps) == (32, 2)
  assert (spec.batch_size, spec.optim.grad_accum_steps) == (16, 1)
  assert dataclasses.replace(moved, batch_size=16, optim=spec.optim) == spec
