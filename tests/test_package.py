"""The package's shape: no import cycles (lazy imports included), the library
never imports the `launch.py` script, and `python -m inception_jax` works; the
wheel stands on its own: installed, it trains from an empty directory."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import FAST_COMPILE, ROOT, run_cli

PACKAGE = os.path.join(ROOT, 'inception_jax')


def _module_name(path, root=ROOT):
  rel = os.path.relpath(path, root)[:-len('.py')].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _imports(path):
  """Every module an `import` anywhere in the file names (functions included)."""
  names = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def _graph(package=PACKAGE):
  files = [os.path.join(d, f) for d, _, fs in os.walk(package) for f in fs
           if f.endswith('.py')]
  modules = {_module_name(f, os.path.dirname(package)): f for f in files}
  return {m: sorted(n for n in _imports(f) if n in modules and n != m)
          for m, f in modules.items()}, {m: _imports(f) for m, f in modules.items()}


def test_no_module_of_the_package_imports_launch():
  _, imports = _graph()
  assert not [m for m, names in imports.items() if 'launch' in names]


def test_no_import_cycles():
  graph, _ = _graph()
  state = {}

  def visit(module, path):
    state[module] = 'open'
    for dep in graph[module]:
      assert state.get(dep) != 'open', ' → '.join(path + [dep])
      if dep not in state:
        visit(dep, path + [dep])
    state[module] = 'done'

  for module in graph:
    if module not in state:
      visit(module, [module])
  assert 'inception_jax.train' in graph and 'inception_jax.cli' in graph


def test_python_m_inception_jax_prints_its_commands(tmp_path):
  result = run_cli('--help', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  for command in ('train', 'cost', 'sweep', 'compare'):
    assert command in result.stdout


# --- The allowed import edges: docs/ARCHITECTURE.md's layering ----------------

LAYER_NAMES = ('foundation', 'run directory', 'library', 'configs', 'run services',
               'commands', 'command line')
# Each module's layer (names without the `inception_jax.` prefix). An import may
# point to a lower layer; within a layer only to what SAME_LAYER lists.
LAYERS = {
    '': 0, 'data': 0, 'errors': 0, 'compat': 0,              # '': the package itself
    'rundir': 1,
    'convolution': 2, 'layers': 2, 'blocks': 2, 'models': 2, 'interop': 2, 'optim': 2,
    'losses': 2, 'parallel': 2, 'stopping': 2, 'checkpointing': 2, 'tracking': 2,
    'pruning': 2,
    'data.synthetic': 2, 'data.preprocess': 2, 'data.sources': 2, 'data.pipeline': 2,
    'data.prepare': 2,
    'config_lib': 3, 'config_checks': 3, 'specs': 3,
    'trainstate': 4, 'transfer': 4, 'cost': 4,
    'train': 5, 'evaluate': 5, 'sweep': 5, 'report': 5,
    'search_report': 5, 'search': 5,
    'cli': 6, '__main__': 6,
}
SAME_LAYER = {
    ('layers', 'convolution'), ('blocks', 'layers'), ('models', 'blocks'),
    ('models', 'layers'), ('models', 'convolution'), ('interop', 'layers'),
    ('interop', 'models'), ('data.sources', 'data.preprocess'),
    ('data.sources', 'data.synthetic'), ('data.pipeline', 'data.preprocess'),
    ('data.prepare', 'data.sources'), ('specs', 'config_checks'),
    ('transfer', 'trainstate'), ('__main__', 'cli'),
    ('search_report', 'report'), ('search', 'sweep'),
}


def _short(module):
  return module.removeprefix('inception_jax').removeprefix('.')


def wrong_edges(graph, layers=LAYERS, same_layer=SAME_LAYER):
  """Each import of `graph` (module → the package's modules it imports) that
  points up a layer or sideways without being listed, and each module
  without a layer, as a line naming it."""
  problems = []
  for module, imported in sorted(graph.items()):
    source = _short(module)
    if source not in layers:
      problems.append(f'{source}: a module without a layer (add it to LAYERS)')
      continue
    for target in map(_short, imported):
      if target not in layers:
        continue                    # named once, as a module of its own
      up, down = layers[source], layers[target]
      if up < down or (up == down and (source, target) not in same_layer):
        problems.append(f'{source} ({LAYER_NAMES[up]}) imports {target} '
                        f'({LAYER_NAMES[down]}): an edge the layering does not allow')
  return problems


def test_imports_point_down_the_layers():
  """docs/ARCHITECTURE.md's layering, lazy (function-level) imports included."""
  graph, _ = _graph()
  assert not wrong_edges(graph), '\n'.join(wrong_edges(graph))


def _architecture_table():
  """docs/ARCHITECTURE.md's layering table as (module → layer, within-layer edges)."""
  with open(os.path.join(ROOT, 'docs', 'ARCHITECTURE.md')) as f:
    text = f.read()
  table = text[text.index('| layer | modules | imports within the layer |'):].split('\n\n')[0]
  layers, edges = {}, set()
  for line in table.splitlines()[2:]:
    name, modules, within = (cell.strip() for cell in line.strip().strip('|').split('|'))
    number = int(name.split()[0])
    assert name == f'{number} {LAYER_NAMES[number]}', name
    for module in re.findall(r'`([^`]+)`', modules):
      layers['' if module == 'inception_jax' else module] = number
    for part in filter(None, (p.strip() for p in within.split(';'))):
      source, targets = part.split('→')
      edges |= {(source.strip().strip('`'), t) for t in re.findall(r'`([^`]+)`', targets)}
  return layers, edges


def test_architecture_md_states_the_allowed_edges():
  """The layering the docs state is the list the test above holds the code to."""
  layers, edges = _architecture_table()
  assert layers == LAYERS
  assert edges == SAME_LAYER


def test_an_upward_import_is_refused_by_name(tmp_path):
  """A copy of the package where models.py imports train inside a function."""
  import shutil
  copy = tmp_path / 'inception_jax'
  shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns('__pycache__'))
  with open(copy / 'models.py', 'a') as f:
    f.write('\n\ndef _planted():\n  from inception_jax import train\n  return train\n')
  graph, _ = _graph(str(copy))
  assert wrong_edges(graph) == [
      'models (library) imports train (commands): an edge the layering does not allow']
  # The edges issue 32 removed (the model loading user modules, evaluate
  # borrowing train's batch), a sideways one not listed, a module without a layer.
  assert wrong_edges({'inception_jax.models': ['inception_jax.config_lib'],
                      'inception_jax.evaluate': ['inception_jax.train'],
                      'inception_jax.optim': ['inception_jax.losses'],
                      'inception_jax.tuning': []}) == [
      'evaluate (commands) imports train (commands): an edge the layering does not allow',
      'models (library) imports config_lib (configs): an edge the layering does not allow',
      'optim (library) imports losses (library): an edge the layering does not allow',
      'tuning: a module without a layer (add it to LAYERS)']


def test_shipped_configs_and_sweeps_load_by_name_from_any_directory(tmp_path, monkeypatch,
                                                                   cli_main):
  from inception_jax import config_lib, sweep
  monkeypatch.chdir(tmp_path)
  assert cli_main('cost', '--config', 'inception_v9') == (
      2, '', "error: no shipped config named 'inception_v9'; the shipped configs: "
             "inception_v3 (or give a FILE.py path)\n")
  by_name = config_lib.load('inception_v3:scale=tiny', ['seed=3'])
  assert by_name.to_dict() == config_lib.load('configs/inception_v3.py:scale=tiny',
                                              ['seed=3']).to_dict()
  assert config_lib.absolute('inception_v3:scale=tiny') == (
      os.path.join(ROOT, 'configs', 'inception_v3.py') + ':scale=tiny')
  runs = sweep.load_sweep('table3_ablation:scale=demo')
  assert runs == sweep.load_sweep('sweeps/table3_ablation.py:scale=demo')
  assert sweep.sweep_name('table3_ablation:scale=demo') == 'table3_ablation'
  with pytest.raises(config_lib.ConfigError, match=r"no shipped sweep named 'table9'; "
                     r"the shipped sweeps: aux_head, .*table3_ablation \(or give"):
    sweep.load_sweep('table9')
  from inception_jax import search
  assert search.load_search('lr_smoothing:scale=tiny') == search.load_search(
      'searches/lr_smoothing.py:scale=tiny')
  with pytest.raises(config_lib.ConfigError, match=r"no shipped search named 'lr'; "
                     r"the shipped searches: lr_smoothing \(or give"):
    search.load_search('lr')


# --- The wheel: a package that stands on its own -------------------------------

# What `pip wheel .` reads: the wheel is built from a copy of these, so the
# checkout gets no build/ or egg-info, and tests running at once don't collide.
WHEEL_SOURCES = ('pyproject.toml', 'README.md', 'LICENSE', 'inception_jax', 'configs',
                 'sweeps', 'searches')


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  """The wheel of this checkout, built offline (no build isolation, no index)."""
  tmp = tmp_path_factory.mktemp('wheel')
  source = tmp / 'source'
  source.mkdir()
  for name in WHEEL_SOURCES:
    if os.path.isdir(os.path.join(ROOT, name)):
      shutil.copytree(os.path.join(ROOT, name), source / name,
                      ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(os.path.join(ROOT, name), source / name)
  _pip('wheel', '--no-deps', '--no-build-isolation', '-w', tmp / 'dist', source)
  (path,) = (tmp / 'dist').glob('inception_jax-*.whl')
  return path


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory):
  """The wheel installed into a folder of its own (`pip install --target`)."""
  target = tmp_path_factory.mktemp('installed')
  _pip('install', '--no-deps', '--target', target, wheel)
  return target


def _pip(*args):
  proc = subprocess.run([sys.executable, '-m', 'pip', '-q', *map(str, args), '--no-index'],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def _installed_python(target, *args, cwd):
  """`python ARGS` in `cwd` with the installed copy, not the checkout, importable."""
  env = dict(os.environ, PYTHONPATH=str(target),
             XLA_FLAGS=f'{FAST_COMPILE} --xla_force_host_platform_device_count=8')
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.xdist_group('wheel')
def test_the_wheel_holds_every_module_the_configs_sweeps_and_license(wheel):
  import inception_jax
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    info = next(n.split('/')[0] for n in names if n.endswith('.dist-info/METADATA'))
    metadata = archive.read(f'{info}/METADATA').decode().splitlines()
    entry_points = archive.read(f'{info}/entry_points.txt').decode()
  modules = {os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, '/')
             for d, _, files in os.walk(PACKAGE) for f in files if f.endswith('.py')}
  shipped = {f'inception_jax/{kind}/{f}' for kind in ('configs', 'sweeps', 'searches')
             for f in os.listdir(os.path.join(ROOT, kind)) if f.endswith('.py')}
  assert 'inception_jax/configs/inception_v3.py' in shipped
  assert 'inception_jax/searches/lr_smoothing.py' in shipped
  assert sorted((modules | shipped) - names) == []
  assert f'{info}/licenses/LICENSE' in names
  assert 'License-Expression: Apache-2.0' in metadata
  assert f'Version: {inception_jax.__version__}' in metadata
  assert 'Provides-Extra: tensorboard' in metadata
  assert 'Provides-Extra: search' in metadata
  assert 'inception-jax = inception_jax.cli:main' in entry_points.splitlines()


@pytest.mark.xdist_group('wheel')
def test_the_installed_package_answers_from_an_empty_directory(installed, tmp_path):
  import inception_jax
  where = _installed_python(installed, '-c', 'import inception_jax; print(inception_jax.__file__)',
                            cwd=tmp_path)
  assert where.stdout.startswith(str(installed)), where.stdout + where.stderr
  version = _installed_python(installed, '-m', 'inception_jax', '--version', cwd=tmp_path)
  assert version.stdout.strip() == f'inception_jax {inception_jax.__version__}'

  dry = _installed_python(installed, '-m', 'inception_jax', 'train', '--config',
                          'inception_v3:scale=tiny', '--workdir', 'run', '--dry-run',
                          cwd=tmp_path)
  assert dry.returncode == 0, dry.stderr
  config = json.loads(dry.stdout.split('\n\n')[0])        # as config.json would hold it
  assert config['total_steps'] == 6 and config['model']['width_multiplier'] == 0.05
  assert config['model']['conv_impl'] in ('xla', 'cpu_matmul')   # resolved, as trained
  assert 'micro-batches' in dry.stdout and 'multiply-adds' in dry.stdout
  sweep = _installed_python(installed, '-m', 'inception_jax', 'sweep',
                            'table3_ablation:scale=demo', '--workdir', 'sweep', '--dry-run',
                            cwd=tmp_path)
  assert sweep.returncode == 0, sweep.stderr
  assert 'v2_rmsprop' in sweep.stdout and 'inception_v3' in sweep.stdout
  search = _installed_python(installed, '-m', 'inception_jax', 'search', 'lr_smoothing',
                             '--workdir', 'search', '--dry-run', cwd=tmp_path)
  assert search.returncode == 0, search.stderr
  assert 'optim.learning_rate: LogUniform(0.003, 0.1)' in search.stdout
  assert os.listdir(tmp_path) == []                       # a dry run writes nothing


@pytest.mark.xdist_group('wheel')
def test_the_installed_package_trains_from_an_empty_directory(installed, tmp_path):
  proc = _installed_python(installed, '-m', 'inception_jax', 'train', '--config',
                           'inception_v3:scale=tiny', '--workdir', 'run', cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'top-1 error' in proc.stdout
  with open(tmp_path / 'run' / 'result.json') as f:
    assert json.load(f)['steps'] == 6
