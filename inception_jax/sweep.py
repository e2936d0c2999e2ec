"""Sweeps: `sweeps/NAME.py` defines `get_sweep(arg)` returning named runs.

Each run is a dict (or `Run`) with a `name`, a `config` (`FILE.py[:ARG]`),
optional `overrides` ({'optim.name': 'momentum', ...}) and optional `paper`
figures to print beside ours ({'top1_error': 23.4, 'cost_bn_ops': 3.8}).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from inception_jax import config_lib
from inception_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  config: str
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  paper: dict[str, Any] = dataclasses.field(default_factory=dict)

  def build_config(self) -> ml_collections.ConfigDict:
    return config_lib.load(self.config, self.overrides)


def load_sweep(path_arg: str) -> list[Run]:
  """Expand `sweeps/NAME.py[:ARG]` into its runs; names must be unique."""
  path, _, arg = path_arg.partition(':')
  module = config_lib.load_module(path)
  if not hasattr(module, 'get_sweep'):
    raise ConfigError(f'{path} defines no get_sweep(arg)')
  runs = [r if isinstance(r, Run) else Run(**r) for r in module.get_sweep(arg or None)]
  names = [r.name for r in runs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ConfigError(f'{path}: duplicate run names {duplicates}')
  bad = [n for n in names if not n or os.sep in n or n.startswith('.')]
  if bad:
    raise ConfigError(f'{path}: run names must be plain directory names: {bad}')
  return runs
