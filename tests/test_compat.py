"""compat.py: every private or version-dependent library use still fits the
installed libraries, an upgrade that breaks one says which function to
update, and no other module reaches into a library's private API."""

import ast
import os
import re
import sys
import types

import orbax.checkpoint as ocp
import pytest

from inception_jax import compat

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'inception_jax')


@pytest.mark.parametrize('use', compat.USES, ids=lambda u: u.name)
def test_every_use_still_fits_the_installed_library(use):
  use.check()


def test_an_upgrade_that_removes_an_attribute_names_the_function_to_update(monkeypatch):
  """The check and the function itself fail with the same one line."""
  monkeypatch.delattr(ocp.CheckpointManager, '_maybe_await_cleanup_tmp_directory')
  version = compat.installed_version('orbax-checkpoint')
  expected = (f"orbax-checkpoint {version} no longer has "
              f"CheckpointManager._maybe_await_cleanup_tmp_directory; compat.py's "
              f"`await_orbax_cleanup` was written for 0.12.8 (0.12.x): update it")
  use = next(u for u in compat.USES if u.name == 'await_orbax_cleanup')
  with pytest.raises(compat.Outdated) as raised:
    use.check()
  assert str(raised.value) == expected
  with pytest.raises(compat.Outdated) as raised:
    compat.await_orbax_cleanup(types.SimpleNamespace())
  assert str(raised.value) == expected


def test_a_renamed_argument_or_a_moved_module_is_named_too(monkeypatch):
  monkeypatch.setattr(ocp.type_handlers, 'ArrayHandler',
                      lambda use_replica_parallel=None, metadata_store=None: None)
  with pytest.raises(compat.Outdated, match=r'no longer has the argument '
                     r'array_metadata_store= of ArrayHandler; compat\.py\'s '
                     r'`save_replicated_arrays_whole`'):
    next(u for u in compat.USES if u.name == 'save_replicated_arrays_whole').check()
  monkeypatch.setitem(sys.modules, 'jax._src.xla_bridge', None)      # import fails
  with pytest.raises(compat.Outdated, match=r'^jax \S+ no longer has the module '
                     r'jax\._src\.xla_bridge; compat\.py\'s `quiet_backend_probe`'):
    next(u for u in compat.USES if u.name == 'quiet_backend_probe').check()


def test_a_library_that_is_not_installed_has_nothing_to_check():
  def probe(use):
    raise use.outdated('anything')
  compat.Use('f', 'no-such-distribution-inception-jax', '1.0', probe).check()
  with pytest.raises(compat.Outdated, match=r'^python \S+ no longer has anything'):
    compat.Use('f', 'python', '3.11', probe).check()


def test_cost_analysis_reads_a_dict_or_a_list_of_dicts():
  """JAX's `Compiled.cost_analysis()` has returned both forms."""
  class Compiled:
    def __init__(self, analysis):
      self.analysis = analysis

    def cost_analysis(self):
      return self.analysis
  for form in ({'flops': 6.0}, [{'flops': 6.0}], ({'flops': 6.0},)):
    assert compat.cost_analysis(Compiled(form)) == {'flops': 6.0}
  assert compat.cost_analysis(Compiled(None)) == compat.cost_analysis(Compiled([])) == {}


def test_one_process_has_no_coordination_service_to_wait_at():
  assert compat.wait_at_barrier('test', 1) is False


# --- No private API outside compat.py --------------------------------------------


def _private(name: str) -> bool:
  return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def _on_self(node: ast.expr) -> bool:
  return isinstance(node, ast.Name) and node.id in ('self', 'cls')


def private_reaches(source: str) -> list[str]:
  """What `source` reaches into that a library keeps private: a module or
  name with a leading underscore imported from another package, an
  attribute `x._name` (or getattr(x, '_name')) of anything but self, a
  string naming a `._src` module (a logger)."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [f'import {a.name}' for a in node.names
                if any(map(_private, a.name.split('.')[1:]))]
    elif (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
          and node.module.split('.')[0] not in ('inception_jax', '__future__')):
      names = [*node.module.split('.')[1:], *(a.name for a in node.names)]
      if any(map(_private, names)):
        found.append(f'from {node.module} import ...')
    elif isinstance(node, ast.Attribute) and _private(node.attr) and not _on_self(node.value):
      found.append(ast.unparse(node))
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and node.func.id in ('getattr', 'setattr', 'hasattr', 'delattr')
          and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
          and isinstance(node.args[1].value, str) and _private(node.args[1].value)
          and not _on_self(node.args[0])):
      found.append(ast.unparse(node))
    elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
          and re.search(r'\w\._src\b', node.value)):
      found.append(repr(node.value))
  return found


def test_the_scan_finds_every_kind_of_reach():
  planted = ('from jax._src import distributed\n'
             'import orbax.checkpoint._src.metadata\n'
             'from tensorboardX.event_file_writer import _EventLoggerThread\n'
             'manager._maybe_await_cleanup_tmp_directory()\n'
             "getattr(job, '_left_queue', None)\n"
             "logging.getLogger('jax._src.xla_bridge')\n")
  assert sorted(private_reaches(planted)) == sorted([
      'from jax._src import ...', 'import orbax.checkpoint._src.metadata',
      'from tensorboardX.event_file_writer import ...',
      'manager._maybe_await_cleanup_tmp_directory', "getattr(job, '_left_queue', None)",
      "'jax._src.xla_bridge'"])
  # What is not a reach: one's own attributes, dunders, the package's own modules.
  assert private_reaches('self._x = x.__class__\nfrom inception_jax import _y\n'
                         'from __future__ import annotations\n') == []


def test_no_module_but_compat_reaches_into_a_library_s_private_api():
  found = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      path = os.path.join(root, name)
      if name.endswith('.py') and path != os.path.join(PACKAGE, 'compat.py'):
        with open(path) as f:
          reaches = private_reaches(f.read())
        if reaches:
          found[os.path.relpath(path, PACKAGE)] = reaches
  assert found == {}, f'private APIs outside compat.py (move them there): {found}'
