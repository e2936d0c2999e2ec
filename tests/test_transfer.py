"""Fine-tuning (`config.init_from`, `config.freeze`): a run that starts from
another run's weights starts at its accuracy, frozen parameters stay bit for
bit, heads that do not fit start fresh, and what cannot work is refused."""

import re

import jax
import numpy as np
import pytest
from helpers import TINY, TINY_CONFIG

from inception_jax import config_lib, optim, rundir, train, trainstate
from inception_jax.errors import ConfigError

SOURCE_RUN = ['eval_every_steps=0']
FREEZE = 'stem|Mixed_5'


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A finished tiny run: the weights to start from."""
  workdir = str(tmp_path_factory.mktemp('source'))
  return workdir, train.run(config_lib.load(TINY_CONFIG, SOURCE_RUN), workdir)


def _named(tree) -> dict[str, np.ndarray]:
  return {optim.path_name(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.xdist_group('transfer')
def test_a_run_from_another_starts_at_its_accuracy_and_keeps_frozen_weights(
    source, tmp_path):
  workdir, result = source
  config = config_lib.load(TINY_CONFIG, SOURCE_RUN + [f'init_from=run:{workdir}',
                                                      f'freeze={FREEZE}'])
  train.run(config, str(tmp_path))
  evals = [r for r in rundir.read_metrics(str(tmp_path)) if 'eval/top1_error' in r]
  assert [r['step'] for r in evals] == [0, 6]
  # Step 0 evaluates the loaded weights: the source's final evaluation.
  assert evals[0]['eval/top1_error'] == result['metrics']['eval/top1_error']
  assert evals[0]['eval/loss'] == pytest.approx(result['metrics']['eval/loss'], rel=1e-6)
  loaded = _named(trainstate.restore_weights(workdir, 'ema').params)
  for weights in ('raw', 'ema'):
    trained = _named(trainstate.restore_weights(str(tmp_path), weights).params)
    assert trained.keys() == loaded.keys()
    frozen = [n for n in trained if re.match(FREEZE, n)]
    assert len(frozen) > 10 and len(frozen) < len(trained)
    for name in frozen:
      np.testing.assert_array_equal(trained[name], loaded[name], err_msg=name)
    moved = [n for n in trained if n not in frozen
             and not np.array_equal(trained[n], loaded[n])]
    assert len(moved) > 10, weights


def _state(**options) -> trainstate.TrainState:
  """A fresh TrainState of the tiny model (no optimizer state)."""
  from flax import nnx

  from inception_jax import models
  spec = models.preset('inception_v3', **TINY, **options)
  _, params, stats = nnx.split(models.create(spec, image_size=75), nnx.Param, nnx.BatchStat)
  return trainstate.TrainState(step=0, params=params, batch_stats=stats, opt_state=None,
                               ema_params=params, ema_batch_stats=stats)


@pytest.mark.xdist_group('transfer')
def test_a_new_class_count_gets_fresh_heads(source, caplog):
  """Another dataset (5 classes): every array but the two classifiers' comes
  from the source; those keep their initialisation; the EMA equals the result."""
  from inception_jax import transfer
  workdir, _ = source
  fresh = _state(num_classes=5)
  with caplog.at_level('INFO'):
    state = transfer.initialize(fresh, trainstate.restore_weights(workdir).model())
  assert '4 arrays of the heads start fresh' in caplog.text   # kernels and biases
  loaded = _named(trainstate.restore_weights(workdir, 'ema').params)
  ours, before = _named(state.params), _named(fresh.params)
  assert ours.keys() == loaded.keys()
  for name in ours:
    if name in ('Logits/kernel', 'Logits/bias', 'AuxLogits/Logits/kernel',
                'AuxLogits/Logits/bias'):
      assert ours[name].shape[-1] == 5 and loaded[name].shape[-1] == 10
      np.testing.assert_array_equal(ours[name], before[name], err_msg=name)
    else:
      np.testing.assert_array_equal(ours[name], loaded[name], err_msg=name)
  for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.xdist_group('transfer')
def test_what_cannot_work_is_refused_by_name(source, tmp_path):
  workdir, _ = source
  with pytest.raises(ConfigError, match='init_from must be'):
    train.run(config_lib.load(TINY_CONFIG, ['init_from=imagenet']), str(tmp_path / 'a'))
  with pytest.raises(ConfigError, match='not a regular expression'):
    train.run(config_lib.load(TINY_CONFIG, ['freeze=Mixed_[5']), str(tmp_path / 'b'))
  with pytest.raises(ConfigError, match='matches no parameter'):
    train.run(config_lib.load(TINY_CONFIG, ['freeze=mixed_5b']), str(tmp_path / 'c'))
  # Another width: the source does not fit, and the message names a layer.
  with pytest.raises(ConfigError, match=r'does not fit this model: Mixed_5b/\S+ \(6,\) \(source \(4,\)\)'):
    train.run(config_lib.load(TINY_CONFIG, ['model.width_multiplier=0.1',
                                            f'init_from=run:{workdir}']),
              str(tmp_path / 'd'))
  assert not (tmp_path / 'd' / 'checkpoints').exists() or not list(
      (tmp_path / 'd' / 'checkpoints').iterdir())


def test_torchvision_weights_need_its_options():
  """A source with BatchNorm scales (torchvision's port) into a model without
  `bn_scale`: refused, naming the scales and the two options."""
  from inception_jax import models, transfer
  source = models.create(models.preset('inception_v3', bn_scale=True,
                                       avg_pool_include_pad=True, width_multiplier=0.05,
                                       min_depth=4), image_size=75)
  with pytest.raises(ConfigError, match=r'bn/scale \(only in the source\).*bn_scale=True'):
    transfer.initialize(_state(), source)
