"""Blocks of the user's own (`model.imports`): a file or module that registers
a block makes it selectable from the command line, for `cost`, `train` and
`sweep` alike (each process imports it before building the model)."""

import json

from helpers import TINY_CONFIG, run_cli

from inception_jax import rundir

BLOCK = '''
from inception_jax import blocks, layers

@blocks.register('test_user_17')
def plain_17(in_features, *, b, mid_features):
  """A 17×17 'block' that is one 3×3 ConvBN."""
  return b.tower(in_features, layers.conv(mid_features, 3))
'''


def test_an_imported_block_is_selectable_for_cost(tmp_path, cli_main):
  path = tmp_path / 'my_block.py'
  path.write_text(BLOCK)
  code, out, err = cli_main('cost', '--config', TINY_CONFIG, '--json')
  assert code == 0, err
  plain = json.loads(out)
  code, out, err = cli_main('cost', '--config', TINY_CONFIG, '--json',
                            f'--config.model.imports={path}',
                            '--config.model.blocks.grid_17=test_user_17')
  assert code == 0, err
  mine = json.loads(out)
  assert mine['model']['blocks']['grid_17'] == 'test_user_17'
  assert mine['params'] < plain['params'] and mine['macs'] < plain['macs']


def test_a_missing_import_is_one_line(tmp_path, cli_main):
  code, _, err = cli_main('cost', '--config', TINY_CONFIG,
                          f'--config.model.imports={tmp_path}/nowhere.py')
  assert code == 2 and 'model.imports' in err and 'not found' in err
  code, _, err = cli_main('cost', '--config', TINY_CONFIG,
                          '--config.model.imports=no_such_module_here')
  assert code == 2 and "cannot import 'no_such_module_here'" in err
  assert 'Traceback' not in err


def test_an_unregistered_block_names_model_imports(cli_main):
  """The model imports nothing itself (config loading does): a block no module
  registered is one line that says where one of your own is named."""
  code, _, err = cli_main('cost', '--config', TINY_CONFIG,
                          '--config.model.blocks.grid_17=test_user_unregistered')
  assert code == 2 and "unknown block 'test_user_unregistered'" in err
  assert 'model.imports' in err and 'Traceback' not in err


def test_the_example_sweep_trains_the_notebooks_block(tmp_path):
  """sweeps/new_factorization.py (the example of docs/prototyping.md): `launch.py sweep`
  trains notebooks/my_blocks.py's block in a process of its own."""
  done = run_cli('sweep', 'sweeps/new_factorization.py:scale=tiny', '--workdir', tmp_path,
                 '--only', 'v3_asym35', '--seeds', '1')
  assert done.returncode == 0, done.stderr[-3000:]
  run = tmp_path / 'v3_asym35' / 'seed_0'
  config = rundir.read_json(str(run / 'config.json'))
  assert config['model']['blocks']['grid_35'] == 'inception_a_asym'
  assert config['model']['imports'] == 'notebooks/my_blocks.py'
  result = rundir.read_json(str(run / 'result.json'))
  assert result['steps'] == 6 and result['params'] > 0


def test_importing_a_file_again_runs_it_once(tmp_path, recwarn):
  """A spec is built many times in a run: the file registers its block once
  (no 'replaced' warning), however often it is named."""
  from inception_jax import config_lib
  path = tmp_path / 'my_block.py'
  path.write_text(BLOCK.replace('test_user_17', 'test_user_once_17'))
  (first,) = config_lib.import_modules(str(path))
  assert config_lib.import_modules(f'{path}, {path}') == [first, first]
  assert not [w for w in recwarn if 'replaced' in str(w.message)]
