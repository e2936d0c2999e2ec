"""Every sweep in sweeps/ expands, builds and costs; each study varies what it says.

The generic checks glob sweeps/*.py, so a new sweep file is covered without
editing this file. Costs are counted at tiny scale (the counter traces the
network, ~2 s a model), once per distinct model and data config.
"""

import dataclasses
import functools
import glob
import json
import os
import re

import pytest
from flax import nnx

from inception_jax import config_lib, cost, models, rundir, sweep
from inception_jax.data import sources

ROOT = config_lib.ROOT
SWEEPS = sorted(os.path.relpath(p, ROOT)
                for p in glob.glob(os.path.join(ROOT, 'sweeps', '*.py')))
PAPER_KEYS = {'top1_error', 'top5_error', 'cost_bn_ops'}
CONFIG = 'configs/inception_v3.py'


@functools.lru_cache(maxsize=None)
def _expand(path_arg):
  """((run, built config), ...) of a sweep; cached across tests."""
  return tuple((run, run.build_config()) for run in sweep.load_sweep(path_arg))


def _configs(name, scale):
  return {run.name: config for run, config in _expand(f'sweeps/{name}.py:scale={scale}')}


def _spec(config):
  """The model spec, the number of classes resolved as cost.of_config does."""
  classes = sources.num_classes(config.data) if config.model.num_classes is None else None
  return models.InceptionSpec.from_config(config.model, dataset_classes=classes)


@functools.lru_cache(maxsize=None)
def _min_size(stem, grid_reduction, inception_a, factorization_n, blocks):
  return models.min_image_size(models.InceptionSpec(
      stem=stem, grid_reduction=grid_reduction, inception_a=inception_a,
      factorization_n=factorization_n, blocks=dict(blocks)))


def min_image_size(spec):
  """models.min_image_size, cached on the fields that set the geometry."""
  return _min_size(spec.stem, spec.grid_reduction, spec.inception_a,
                   spec.factorization_n, tuple(sorted(spec.blocks.items())))


_COSTS = {}


def cost_of(config):
  """cost.of_config, once per distinct (model, data) config."""
  key = json.dumps([config.model.to_dict(), config.data.to_dict()],
                   sort_keys=True, default=str)
  if key not in _COSTS:
    _COSTS[key] = cost.of_config(config)
  return _COSTS[key]


def _grid_after_stem(spec, image_size):
  narrow = dataclasses.replace(spec, width_multiplier=1e-3, min_depth=1, aux_head=False)
  model = nnx.eval_shape(lambda: models.Inception(narrow, image_size=image_size,
                                                  rngs=nnx.Rngs(0)))
  return model.stem.out_size(image_size)


def _model_diff(a, b):
  a, b = a.model.to_dict(), b.model.to_dict()
  return {k for k in a if a[k] != b[k]}


@pytest.mark.parametrize('scale', ['paper', 'demo', 'tiny'])
@pytest.mark.parametrize('path', SWEEPS)
def test_sweep_expands_and_builds(path, scale):
  runs = _expand(f'{path}:scale={scale}')
  names = [run.name for run, _ in runs]
  assert names and len(set(names)) == len(names), names
  dumps = [json.dumps(c.to_dict(), sort_keys=True, default=str) for _, c in runs]
  assert len(set(dumps)) == len(dumps), f'{path}: two runs share one config'
  width = config_lib.load(f'{CONFIG}:scale={scale}').model.width_multiplier
  for run, config in runs:
    assert set(run.paper) <= PAPER_KEYS, (run.name, run.paper)
    assert all(v is None or 0 < v < 100 for v in run.paper.values()), run.paper
    assert config.model.width_multiplier == width, (run.name, 'ignores scale')
    spec = _spec(config)
    assert config.data.image_size >= min_image_size(spec), run.name
    if scale == 'tiny':
      c = cost_of(config)
      assert c.macs > 0 and c.image_size == config.data.image_size


def test_sweep_files_are_found():
  assert {'sweeps/table3_ablation.py', 'sweeps/table2_resolution.py',
          'sweeps/factorization_activation.py', 'sweeps/grid_reduction.py',
          'sweeps/aux_head.py', 'sweeps/lr_grid.py'} <= set(SWEEPS)


ROWS_T2 = {'rf299': 'factorized', 'rf151': 'rf151', 'rf79': 'rf79'}


@pytest.mark.parametrize('scale', ['demo', 'tiny'])
def test_table2_sizes_grow_with_receptive_field_at_equal_compute(scale):
  configs = _configs('table2_resolution', scale)
  assert {n: c.model.stem for n, c in configs.items()} == ROWS_T2
  sizes = [configs[n].data.image_size for n in ('rf79', 'rf151', 'rf299')]
  assert sizes[0] < sizes[1] < sizes[2], sizes
  assert sizes[2] == config_lib.load(f'{CONFIG}:scale={scale}').data.image_size
  for config in configs.values():
    assert config.data.image_size >= min_image_size(_spec(config))
  # As in the paper, every stem hands the same grid to the blocks after it.
  grids = {_grid_after_stem(_spec(c), c.data.image_size) for c in configs.values()}
  assert len(grids) == 1, grids
  if scale == 'demo':
    # About equal compute (at tiny width the stem dominates: 0.94 vs 0.58 M).
    macs = [cost_of(c).macs for c in configs.values()]
    assert max(macs) / min(macs) < 1.6, macs


def test_table2_at_paper_scale_is_the_papers_299_151_79():
  configs = _configs('table2_resolution', 'paper')
  for name, config in configs.items():
    spec = _spec(config)
    assert config.data.image_size == spec.default_image_size == int(name[2:])
  # "Almost identical computational cost" (the aux head is training-only).
  macs = [cost.count(dataclasses.replace(_spec(c), aux_head=False),
                     c.data.image_size).macs for c in configs.values()]
  assert max(macs) / min(macs) < 1.1, macs
  assert configs['rf299'].model.to_dict() == models.preset(
      'inception_v3', bn_group_size=32, bn_update_per_group=True, dtype='auto').to_dict()


def test_table2_image_size_arg_keeps_the_grids_equal():
  runs = {r.name: r for r in sweep.load_sweep('sweeps/table2_resolution.py:scale=demo,image_size=107')}
  assert [r.overrides['data.image_size'] for r in runs.values()] == [107, 55, 31]


def test_factorization_activation_rows_differ_only_in_the_activation():
  configs = _configs('factorization_activation', 'tiny')
  relu, linear = configs['relu'], configs['linear']
  assert (relu.model.factorized_activation, linear.model.factorized_activation) == ('relu', 'linear')
  assert _model_diff(relu, linear) == {'factorized_activation'}
  a, b = cost_of(relu), cost_of(linear)
  assert (a.params, a.macs) == (b.params, b.macs)


def test_grid_reduction_rows_cover_every_reduction():
  configs = _configs('grid_reduction', 'tiny')
  assert [c.model.grid_reduction for c in configs.values()] == list(models.GRID_REDUCTIONS)
  assert _model_diff(configs['efficient'], configs['conv_pool']) == {'grid_reduction'}
  macs = {n: cost_of(c).macs for n, c in configs.items()}
  # Fig. 9: conv-then-pool runs the widening conv at full resolution.
  assert macs['conv_pool'] == max(macs.values()) and len(set(macs.values())) == 3


def test_aux_head_rows_switch_the_head_and_its_bn():
  configs = _configs('aux_head', 'tiny')
  assert [(c.model.aux_head, c.model.aux_bn) for c in configs.values()] == [
      (True, True), (True, False), (False, True)]
  assert configs['no_aux'].loss.aux_weight == 0.0
  assert configs['aux_bn'].loss.aux_weight == 0.4
  costs = {n: cost_of(c) for n, c in configs.items()}
  assert costs['aux_bn'].aux_params > 0 and costs['aux_no_bn'].aux_params > 0
  assert costs['no_aux'].aux_params == costs['no_aux'].aux_macs == 0
  assert len({c.macs for c in costs.values()}) == 1   # inference network unchanged
  paper = {r.name: r.paper['top1_error'] for r, _ in _expand('sweeps/aux_head.py:scale=paper')}
  assert paper == {'aux_bn': 21.2, 'aux_no_bn': 21.6, 'no_aux': None}   # Fig. 8: 0.4%


@pytest.mark.parametrize('scale', ['demo', 'paper'])
def test_lr_grid_is_the_product_of_rates_and_smoothings(scale):
  module = config_lib.load_module('sweeps/lr_grid.py')
  runs = _expand(f'sweeps/lr_grid.py:scale={scale}')
  base = config_lib.load(f'{CONFIG}:scale={scale}').optim.learning_rate
  pairs = {(c.optim.learning_rate, c.loss.label_smoothing) for _, c in runs}
  assert len(pairs) == len(runs) == len(module.FACTORS) * len(module.SMOOTHINGS)
  assert {lr for lr, _ in pairs} >= {base}
  assert {ls for _, ls in pairs} == set(module.SMOOTHINGS)
  for run, config in runs:
    assert re.fullmatch(r'lr[0-9.]+e-?\d+_ls[0-9.]+', run.name), run.name
    assert float(run.name[2:].split('_')[0]) == pytest.approx(config.optim.learning_rate)
  names = [run.name for run, _ in runs]
  if scale == 'demo':
    assert 'lr1e-3_ls0.1' in names and 'lr3e-4_ls0' in names
  else:
    with_paper = [r.name for r, _ in runs if r.paper.get('top1_error') is not None]
    assert with_paper == ['lr4.5e-2_ls0.1']


def test_lr_grid_args_choose_the_optimizer_rates_and_smoothings():
  """The momentum study of docs/sweeps.md: given rates and smoothings, everything
  else as in the config."""
  arg = 'model=inception_v2,optim=momentum,lrs=0.01/0.03,smoothings=0'
  runs = _expand(f'sweeps/lr_grid.py:{arg}')
  assert [run.name for run, _ in runs] == ['lr1e-2_ls0', 'lr3e-2_ls0']
  for (_, config), lr in zip(runs, (0.01, 0.03)):
    assert config.optim.name == 'momentum' and config.optim.learning_rate == lr
    assert config.loss.label_smoothing == 0.0 and config.model.stem == '7x7'
  for bad, message in (('optim=adam', 'optim must be'), ('lrs=0.1/x', 'lrs must be'),
                       ('smoothings=', None)):
    if message is None:     # an empty value keeps the default
      assert len(sweep.load_sweep(f'sweeps/lr_grid.py:{bad}')) == 6
      continue
    with pytest.raises(config_lib.ConfigError, match=message):
      sweep.load_sweep(f'sweeps/lr_grid.py:{bad}')


def test_table3_demo_rows_differ_only_in_their_change():
  """At demo scale each row is the previous one plus its one change (the
  momentum row: its own learning rate), over at least two seeds."""
  runs = _expand('sweeps/table3_ablation.py:scale=demo')
  assert all(run.seeds and len(run.seeds) >= 2 for run, _ in runs)
  flat = [rundir.flatten(config.to_dict()) for _, config in runs]
  changes = [sorted(k for k in flat[i] if flat[i][k] != flat[i - 1][k])
             for i in range(1, len(flat))]
  assert changes == [['optim.learning_rate', 'optim.name'],    # + RMSProp
                     ['loss.label_smoothing'],                 # + label smoothing
                     ['model.stem'],                           # + factorized 7×7
                     ['model.aux_bn']]                         # + BN-auxiliary


def _one_error_line(err):
  assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err
  return err


def test_a_syntax_error_in_a_sweep_or_config_file_is_one_line(tmp_path, cli_main):
  """The file and line, as Python gives them; configs load the same way."""
  bad = tmp_path / 'typo.py'
  bad.write_text("def get_sweep(arg):\n  return [dict(name='a', config='x.py'\n")
  code, _, err = cli_main('sweep', bad, '--workdir', tmp_path / 'runs')
  assert code == 2
  assert _one_error_line(err).startswith(f"error: {bad}, line 2: syntax error: '(' was "
                                         f'never closed')
  bad.write_text('def get_config(arg):\n  return 1 +\n')
  code, _, err = cli_main('train', '--config', bad, '--workdir', tmp_path / 'run')
  assert code == 2 and f'{bad}, line 2: syntax error' in _one_error_line(err)


def test_a_misspelled_run_field_is_one_line_naming_the_run(tmp_path, cli_main):
  path = tmp_path / 'fields.py'
  path.write_text(f"def get_sweep(arg):\n  return [dict(name='lr', config={CONFIG!r}, "
                  f"overide={{'seed': 1}})]\n")
  code, _, err = cli_main('sweep', path, '--workdir', tmp_path / 'runs')
  assert code == 2
  assert _one_error_line(err) == (
      f"error: {path}: run 'lr' has unknown field(s) 'overide'; a run has the fields "
      f'name, config, overrides, paper, seeds\n')
  path.write_text("def get_sweep(arg):\n  return [dict(name='lr'), 'x']\n")
  with pytest.raises(config_lib.ConfigError, match="run 'lr' has no 'config'"):
    sweep.load_sweep(str(path))
  path.write_text("def get_sweep(arg):\n  return ['x']\n")
  with pytest.raises(config_lib.ConfigError, match='run 0 of get_sweep.. is a str'):
    sweep.load_sweep(str(path))


def test_an_error_raised_by_a_sweep_files_code_keeps_its_traceback(tmp_path):
  """Its own code's bug: the user needs the traceback into it."""
  path = tmp_path / 'buggy.py'
  path.write_text('def get_sweep(arg):\n  return 1 / 0\n')
  with pytest.raises(ZeroDivisionError):
    sweep.load_sweep(str(path))
  with pytest.raises(config_lib.ConfigError, match="sweep file '.*missing.py' not found"):
    sweep.load_sweep(str(tmp_path / 'missing.py'))
