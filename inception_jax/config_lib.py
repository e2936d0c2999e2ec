"""Loading ml_collections configs: `NAME|FILE.py[:ARG]` plus `--config.KEY=VALUE`.

A config file defines `get_config(arg)`; ARG is a big_vision-style string of
comma-separated `key=value` pairs (`scale=demo,model=inception_v2`). The
config it returns is locked, so an unknown key is an error, and assignments
are type-checked by ml_collections.

A bare NAME (`inception_v3`, `table3_ablation`, `lr_smoothing`) is a shipped
file: one of `configs/`, `sweeps/` or `searches/` at the top of a checkout,
which the wheel installs as `inception_jax/configs/`, `inception_jax/sweeps/`
and `inception_jax/searches/` (pyproject.toml), so the same name works from any
directory, installed or not.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import sys
from typing import Any, Iterable, Mapping

import ml_collections

from inception_jax.errors import ConfigError

PACKAGE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(PACKAGE)
# Directory: what each file is.
SHIPPED = {'configs': 'config', 'sweeps': 'sweep', 'searches': 'search'}
_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')          # a shipped file by name


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`'scale=demo,model=inception_v2'` → ConfigDict over `defaults`; each value
  takes the type of its default, and unknown keys are an error."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, raw = item.partition('=')
    key = key.strip()
    if not sep or key not in defaults:
      raise ConfigError(f'config arg {item!r} is not KEY=VALUE with KEY in '
                        f'{sorted(defaults)}')
    result[key] = parse_value(raw.strip(), defaults[key], f'config arg {key}')
  return result


def parse_value(raw: str, current: Any, where: str) -> Any:
  """Parse a command-line string as the type of the value it replaces."""
  try:
    if isinstance(current, bool):
      lowered = raw.lower()
      if lowered not in ('true', 'false', '1', '0', 'yes', 'no'):
        raise ValueError
      return lowered in ('true', '1', 'yes')
    if isinstance(current, int):
      return int(raw)
    if isinstance(current, float):
      return float(raw)
    if isinstance(current, str):
      return raw
    if isinstance(current, (tuple, list)) or current is None:
      try:
        value = ast.literal_eval(raw)
      except (ValueError, SyntaxError):
        if current is not None:
          raise
        return raw
      return type(current)(value) if current is not None else value
  except (ValueError, TypeError):
    raise ConfigError(f'{where}={raw!r}: expected {type(current).__name__}') from None
  raise ConfigError(f'{where}: cannot set a {type(current).__name__} from the '
                    f'command line; set its fields one by one')


def shipped_dir(kind: str) -> str:
  """The folder of the shipped `kind` files (a key of SHIPPED): inside
  the package when installed from a wheel, else at the top of the checkout."""
  installed = os.path.join(PACKAGE, kind)
  return installed if os.path.isdir(installed) else os.path.join(ROOT, kind)


def shipped(kind: str = 'configs') -> list[str]:
  """The names of the shipped config (sweep, search) files: ['inception_v3']."""
  folder = shipped_dir(kind)
  files = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(f[:-len('.py')] for f in files
                if f.endswith('.py') and _NAME.fullmatch(f[:-len('.py')]))


def _resolve(path: str, base: str | None = None, kind: str = 'configs') -> str:
  """The file `path` names: a shipped file by NAME, else the path as given,
  under `base`, under the checkout or (`configs/…`, `sweeps/…`, `searches/…`
  in an installed package) among the shipped files."""
  if _NAME.fullmatch(path):
    candidate = os.path.join(shipped_dir(kind), f'{path}.py')
    if os.path.isfile(candidate):
      return candidate
    raise ConfigError(f'no shipped {SHIPPED[kind]} named {path!r}; the shipped '
                      f'{kind}: {", ".join(shipped(kind)) or "none"} (or give a FILE.py path)')
  candidates = [path, os.path.join(base or '', path), os.path.join(ROOT, path)]
  folder, _, rest = path.replace(os.sep, '/').partition('/')
  if folder in SHIPPED:
    candidates.append(os.path.join(shipped_dir(folder), rest))
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise ConfigError(f'{SHIPPED[kind]} file {path!r} not found')


def absolute(path_arg: str, base: str | None = None, kind: str = 'configs') -> str:
  """`NAME|FILE.py[:ARG]` with the file's absolute path (found as `load` finds
  it), so the same config is loaded from any working directory."""
  path, sep, arg = path_arg.partition(':')
  return os.path.abspath(_resolve(path, base, kind)) + sep + arg


def load_module(path: str, base: str | None = None, kind: str = 'configs'):
  """Import the `.py` file `path` (a config, sweep or search file; a bare NAME is a
  shipped one of `kind`). A syntax error in it is one line naming the file
  and line; an error its code raises when run keeps its traceback (a bug in
  the user's code)."""
  path = _resolve(path, base, kind)
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  try:                          # compiled apart from running, to tell the two apart
    code = spec.loader.get_code(module.__name__)
  except SyntaxError as e:
    raise ConfigError(f'{e.filename or path}, line {e.lineno}: syntax error: {e.msg}') from None
  exec(code, module.__dict__)   # as spec.loader.exec_module(module) does
  return module


def load(path_arg: str, overrides: Mapping[str, Any] | Iterable[str] = (),
         base: str | None = None) -> ml_collections.ConfigDict:
  """Load `NAME|FILE.py[:ARG]` and apply overrides (`{'a.b': v}` or `['a.b=v']`)."""
  path, _, arg = path_arg.partition(':')
  module = load_module(path, base)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{path} defines no get_config(arg)')
  config = module.get_config(arg or None)
  config.lock()
  if isinstance(overrides, Mapping):
    for key, value in overrides.items():
      set_value(config, key, value)
  else:
    for item in overrides:
      key, sep, raw = item.partition('=')
      if not sep:
        raise ConfigError(f'override {item!r} is not KEY=VALUE')
      set_value(config, key, raw, from_string=True)
  import_user_modules(config)
  return config


def set_value(config: ml_collections.ConfigDict, key: str, value: Any,
              from_string: bool = False) -> None:
  """Set dotted `key`; unknown keys and wrong types are `ConfigError`s."""
  node, parts = config, key.split('.')
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join(parts[:i]) or 'the config'
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ConfigError(f'unknown config key {key!r}: {where} has no {part!r}'
                        + (f' (known: {", ".join(known)})' if known else ''))
    if i < len(parts) - 1:
      node = node[part]
  leaf, current = parts[-1], node[parts[-1]]
  if from_string:
    value = parse_value(value, current, f'--config.{key}')
  try:
    node[leaf] = value
  except TypeError:
    raise ConfigError(f'config key {key!r} expects {type(current).__name__}, '
                      f'got {value!r}') from None


_IMPORTED: dict[str, object] = {}      # .py files imported by `import_modules`, by path


def import_modules(spec: str, base: str | None = None) -> list:
  """Import the comma-separated modules or `.py` files of `spec`
  (`config.model.imports`): the blocks and stems they register become
  selectable. A `.py` path is found as config files are (as given, under
  `base`, under the repository); a module name is imported with the working
  directory on the path. Each file is executed once per process."""
  modules = []
  for item in filter(None, (part.strip() for part in spec.split(','))):
    if item.endswith('.py'):
      try:
        path = os.path.abspath(_resolve(item, base))
      except ConfigError:
        raise ConfigError(f'model.imports: {item!r} not found') from None
      if path not in _IMPORTED:
        _IMPORTED[path] = load_module(path)
      modules.append(_IMPORTED[path])
      continue
    if os.getcwd() not in sys.path:
      sys.path.append(os.getcwd())
    try:
      modules.append(importlib.import_module(item))
    except ImportError as e:
      raise ConfigError(f'model.imports: cannot import {item!r}: {e}') from None
  return modules


def import_user_modules(config) -> list:
  """Import the modules and files `config.model.imports` names
  (`import_modules`), so the blocks and stems they register exist before a
  model spec checks its block names. Where a config turns into a model it
  comes through here first: `load`, `train.run`, `cost.of_config`, and a
  run's config.json read back (`trainstate.restore_weights`). The model
  itself imports nothing: `models` sits below config loading. `config`: a
  ConfigDict, a nested dict or a spec; one without the key imports nothing."""
  return import_modules(_field(_field(config, 'model'), 'imports') or '')


def _field(node, key: str):
  """`node[key]` of a dict, `node.key` of a ConfigDict or a spec; None without."""
  return node.get(key) if isinstance(node, dict) else getattr(node, key, None)
