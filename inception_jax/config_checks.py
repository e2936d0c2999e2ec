"""The rule of every config value: its type and range.

`RULES` maps each dotted config key to what it may hold; the specs
(inception_jax/specs.py) check each value against it when they are made
and raise a `ConfigError` naming the first key that breaks its rule, the
value and the allowed range, e.g.

  data.crop_area_min must be in (0, 1], a fraction, not a percentage (got 8.0)

instead of a traceback from deep inside Grain or a run that trains on
nonsense (`loss.label_smoothing=10`). Keys whose values need more than a
type and a range get a type rule here and the rest of their check in the
specs (`init_from`'s form, `freeze` a regular expression) or where they are
used (a block registered by `model.imports`, a dataset on disk); `EXEMPT`
lists, with the reason, the keys with no rule at all.
tests/test_config_checks.py fails on a spec field in neither.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from inception_jax import convolution, models, optim, rundir
from inception_jax.data import preprocess

PERCENT = 'a fraction, not a percentage'


def _show(x) -> str:
  """A bound as written in a range: 2**32 rather than 4294967296."""
  if isinstance(x, int) and x >= 2**16 and x & (x - 1) == 0:
    return f'2**{x.bit_length() - 1}'
  return repr(x)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Number:
  """A finite number (an integer when `integer`) in a range; `low_open` and
  `high_open` leave the bound out; `optional` also allows None."""
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False
  optional: bool = False
  hint: str = ''

  def range(self) -> str:
    if self.low is not None and self.low == self.high:
      return _show(self.low)
    if self.low is not None and self.high is not None:
      return (f'in {"(" if self.low_open else "["}{_show(self.low)}, '
              f'{_show(self.high)}{")" if self.high_open else "]"}')
    if self.low is not None:
      return f'{">" if self.low_open else ">="} {_show(self.low)}'
    if self.high is not None:
      return f'{"<" if self.high_open else "<="} {_show(self.high)}'
    return ''

  def in_range(self, value) -> bool:
    above = self.low is None or (value > self.low if self.low_open else value >= self.low)
    below = self.high is None or (value < self.high if self.high_open else value <= self.high)
    return above and below

  def problem(self, value) -> str | None:
    """What is wrong with `value` ('must be ...'), or None."""
    if value is None and self.optional:
      return None
    ok_type = _is_integer(value) if self.integer else _is_number(value)
    if not ok_type or not math.isfinite(value):
      kind = 'an integer' if self.integer else 'a finite number'
      return ', '.join(filter(None, [f'must be {kind} {self.range()}'.rstrip(), self.hint]))
    if not self.in_range(value):
      return ', '.join(filter(None, [f'must be {self.range()}', self.hint]))
    return None

  def out_of_range(self) -> list:
    """Values of the right type that this rule refuses (for the tests)."""
    step = 1 if self.integer else 0.5
    bad = []
    if self.low is not None:
      bad.append(self.low if self.low_open else self.low - step)
    if self.high is not None:
      bad.append(self.high if self.high_open else self.high + step)
      if self.hint == PERCENT:
        bad.append(self.high * 100)            # the slip the hint names
    if not self.integer:
      bad.append(math.nan)
    return bad

  def wrong_types(self) -> list:
    return [True, '1'] + ([1.5] if self.integer else [math.inf])


@dataclasses.dataclass(frozen=True)
class Pair:
  """(low, high), both allowed by `each`, with low <= high."""
  each: Number

  def problem(self, value) -> str | None:
    if (isinstance(value, (tuple, list)) and len(value) == 2
        and all(self.each.problem(v) is None for v in value) and value[0] <= value[1]):
      return None
    kind = 'integers' if self.each.integer else 'numbers'
    return ', '.join(filter(None, [f'must be a pair (low, high) of {kind} '
                                   f'{self.each.range()} with low <= high', self.each.hint]))

  def out_of_range(self) -> list:
    good = self.each.high if self.each.high is not None else self.each.low + 1
    bad = [(good, good - 0.125)]               # the wrong way round
    bad += [(v, good) if v < good else (good, v) for v in self.each.out_of_range()
            if not (isinstance(v, float) and math.isnan(v))]
    return bad

  def wrong_types(self) -> list:
    return [0.5, (0.1, 0.2, 0.3), ('a', 'b')]


@dataclasses.dataclass(frozen=True)
class OfType:
  """A value of `types` (a bool is no int), one of `choices` when given."""
  types: tuple
  noun: str
  choices: tuple = ()

  def problem(self, value) -> str | None:
    if isinstance(value, bool) and bool not in self.types:
      return f'must be {self.noun}'
    if not isinstance(value, self.types):
      return f'must be {self.noun}'
    if self.choices and value not in self.choices:
      return f'must be one of {list(self.choices)}'
    return None

  def out_of_range(self) -> list:
    return ['no such choice'] if self.choices else []

  def wrong_types(self) -> list:
    return [1, 'true'] if self.types == (bool,) else [1, None]


@dataclasses.dataclass(frozen=True)
class Strings:
  """A list (or tuple) of strings."""

  def problem(self, value) -> str | None:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
      return None
    return 'must be a list of strings'

  def out_of_range(self) -> list:
    return []

  def wrong_types(self) -> list:
    return ['a', [1]]


# The vocabulary of the table.

def fraction(*, open_left=False, open_right=False) -> Number:
  return Number(0, 1, low_open=open_left, high_open=open_right, hint=PERCENT)


def positive(hint='') -> Number:
  return Number(0, low_open=True, hint=hint)


def at_least(low, hint='') -> Number:
  return Number(low, hint=hint)


def count(low=1, hint='', optional=False) -> Number:
  return Number(low, integer=True, hint=hint, optional=optional)


def flag() -> OfType:
  return OfType((bool,), 'True or False')


def text() -> OfType:
  """A free-form string (a path, a name) or one checked where it is used."""
  return OfType((str,), 'a string')


def choice(options) -> OfType:
  return OfType((str,), 'a string', tuple(options))


RULES = {
    # Top level.
    'config_version': Number(rundir.CONFIG_VERSION, rundir.CONFIG_VERSION, integer=True,
                             hint="this code's config form (a run's recorded config "
                                  "of an earlier one is read through rundir.as_current)"),
    'seed': Number(0, 2**32, high_open=True, integer=True),
    'batch_size': count(),
    'per_device_batch': count(0, '0 for no limit'),
    'fit_batch': flag(),
    'num_epochs': at_least(0),                 # > 0 unless total_steps: specs.RunSpec
    'total_steps': count(0, '0 to let num_epochs decide'),
    'log_every_steps': count(),
    'eval_every_steps': count(0, '0 for at the end only'),
    'checkpoint_every_steps': count(0, '0 for at the end only'),
    'keep_checkpoints': count(),
    'profile_steps': count(0, '0 for none'),
    'init_from': text(),                       # its form: specs.RunSpec
    'freeze': text(),                          # a regular expression: specs.RunSpec

    # model: InceptionSpec checks its choices itself too.
    'model.num_classes': count(optional=True, hint="or None for the dataset's"),
    'model.stem': text(),                      # registered stems: InceptionSpec
    'model.blocks.grid_35': text(),            # registered blocks: InceptionSpec
    'model.blocks.reduce_35': text(),
    'model.blocks.grid_17': text(),
    'model.blocks.reduce_17': text(),
    'model.blocks.grid_8': text(),
    'model.grid_reduction': choice(models.GRID_REDUCTIONS),
    'model.inception_a': choice(('released', 'figure5')),
    'model.factorization_n': count(),
    'model.factorized_activation': choice(('relu', 'linear')),
    'model.width_multiplier': positive(),
    'model.min_depth': count(),
    'model.aux_head': flag(),
    'model.aux_bn': flag(),
    'model.dropout_rate': fraction(open_right=True),
    'model.dtype': choice(models.DTYPES),
    'model.conv_impl': choice(convolution.CHOICES),
    # 1 would freeze the moving averages at their start.
    'model.bn_momentum': fraction(open_right=True),
    'model.bn_epsilon': positive(),
    'model.bn_group_size': count(0, '0 for the whole batch'),
    'model.bn_update_per_group': flag(),
    'model.bn_scale': flag(),
    'model.avg_pool_include_pad': flag(),
    'model.imports': text(),                   # imported with the config (config_lib)

    # data: names and paths are checked when the data is opened.
    'data.name': text(),
    'data.data_dir': text(),
    'data.path': text(),
    'data.train_split': text(),
    'data.eval_split': text(),
    'data.image_size': count(),                # the model's minimum: models.Inception
    'data.num_classes': count(2),              # synthetic's maximum: data.synthetic
    'data.num_train': count(),
    'data.num_eval': count(),
    # A radius relative to the image; synthetic narrows it to [0.05, 0.4].
    'data.object_size': Pair(fraction(open_left=True)),
    'data.crop_sampler': choice(preprocess.CROP_SAMPLERS),
    'data.crop_area_min': fraction(open_left=True),
    'data.crop_attempts': count(),
    'data.min_object_covered': fraction(),
    'data.color_distort': choice(preprocess.COLOR_DISTORTIONS),
    'data.eval_central_fraction': fraction(open_left=True),
    'data.eval_exclude': text(),
    'data.skip_corrupt': flag(),
    'data.num_workers': count(0, '0 for threads only'),
    'data.num_threads': count(),
    'data.prefetch': count(0),

    # optim
    'optim.name': choice(optim.OPTIMIZERS),
    'optim.learning_rate': positive(),
    'optim.decay_epochs': positive(),
    # Above 1 the rate would grow at every decay.
    'optim.decay_rate': fraction(open_left=True),
    'optim.rms_decay': fraction(open_right=True),
    'optim.epsilon': positive(),
    'optim.momentum': fraction(open_right=True),
    'optim.grad_clip_norm': at_least(0, '0 for no clipping'),
    'optim.weight_decay': at_least(0),
    'optim.ema_decay': fraction(),
    'optim.warmup_epochs': at_least(0),
    'optim.base_batch_size': count(0, '0 for the rate as given'),
    'optim.grad_accum_steps': count(0, '0 for the fewest that keep per_device_batch'),

    # loss: at 1 the targets would be uniform, nothing left to learn.
    'loss.label_smoothing': fraction(open_right=True),
    'loss.aux_weight': at_least(0),

    # tracking
    'tracking.tensorboard': flag(),
    'tracking.wandb': flag(),
    # A mode: specs.TrackingSpec (WANDB_MODE, which overrides it: check_process).
    'tracking.wandb_mode': text(),
    'tracking.wandb_init_timeout': positive('in seconds'),
    'tracking.wandb_project': text(),
    'tracking.wandb_group': text(),
    'tracking.run_name': text(),
    'tracking.job_type': text(),
    'tracking.tags': Strings(),
    'tracking.hparams_first': Strings(),
    'tracking.progress': flag(),

    # slurm: 0 or '' leaves the cluster's default.
    'slurm.partition': text(),
    'slurm.nodes': count(0),
    'slurm.tasks_per_node': count(0),
    'slurm.gpus_per_node': count(0),
    'slurm.cpus_per_task': count(0),
    'slurm.mem_gb': count(0),
    'slurm.time_minutes': count(0),
}

# Keys with no rule here, and why.
EXEMPT = {
    # Three counts from 1 to models.MAX_MODULES; models._module_counts says so.
    'model.modules_per_grid': 'checked by models.InceptionSpec',
}
