"""The package's shape: no import cycles (lazy imports included), the library
never imports the `launch.py` script, and `python -m inception_jax` works."""

import ast
import os

from conftest import ROOT, run_cli

PACKAGE = os.path.join(ROOT, 'inception_jax')


def _module_name(path):
  rel = os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')
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


def _graph():
  files = [os.path.join(d, f) for d, _, fs in os.walk(PACKAGE) for f in fs
           if f.endswith('.py')]
  modules = {_module_name(f): f for f in files}
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
