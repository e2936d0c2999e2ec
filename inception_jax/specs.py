"""Frozen, validated specs: the config as the library reads it.

The ml_collections config is the user's interface (`configs/*.py`,
`--config.KEY=VALUE`, sweep overrides). `train.run`, `evaluate` and `cost`
turn it once into a `RunSpec`, and the code below them reads the spec's
fields — named as the config's keys, so `spec.data.image_size` reads what
`config.data.image_size` did — and never looks a key up with a default:

  RunSpec     the top-level keys (seed, batch, schedule, intervals, fine-tuning)
  ├ model     models.InceptionSpec (the architecture; it stays in models.py)
  ├ data      DataSpec      the dataset, its preprocessing and its reading
  ├ optim     OptimSpec     the optimizer, its schedule and the EMA
  ├ loss      LossSpec      label smoothing and the auxiliary head's weight
  ├ tracking  TrackingSpec  TensorBoard, wandb, the run's name
  └ slurm     SlurmSpec     the resources of a SLURM job (`sweep --launcher slurm`)

Each field's default is THE default, the paper's recipe (Section 8): a key
the config leaves out takes it, and `RunSpec()` is the shipped config at
`scale=paper` (tests/test_specs.py holds them together). `from_config`
refuses a key no spec has, naming the nearest known one, and every value is
checked where its spec is made (`__post_init__`, so a spec built in Python is
checked too): its type and range by `config_checks.RULES`, then what depends
on several keys (`RunSpec._check_keys`). What depends on the process rather
than the config (64-bit JAX, WANDB_MODE) is `RunSpec.check_process`, called
by the trainer.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, ClassVar, Mapping

import jax

from inception_jax import config_checks, models, rundir, tracking
from inception_jax.errors import ConfigError

# `init_from`'s forms (inception_jax/transfer.py reads them).
INIT_FROM_KINDS = ('run', 'keras', 'tf_slim', 'torchvision')


def _check(key: str, value: Any) -> None:
  """`value` against the rule of dotted `key`; a mapping without a rule of
  its own (`model`, `model.blocks`), each of its keys against theirs."""
  rule = config_checks.RULES.get(key)
  if rule is None and isinstance(value, Mapping):
    for name, item in value.items():
      _check(f'{key}.{name}', item)
    return
  problem = rule and rule.problem(value)
  if problem:
    raise ConfigError(f'{key} {problem} (got {value!r})')


class _Section:
  """A section of the config (`config.data`, ...): its values checked and
  lists made tuples (a frozen spec holds no mutable value) when made."""
  SECTION: ClassVar[str] = ''

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      _check(f'{self.SECTION}.{field.name}', value)
      if isinstance(value, list):
        object.__setattr__(self, field.name, tuple(value))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DataSpec(_Section):
  """`config.data`: which dataset, how its images are cropped and coloured
  (Google's Inception preprocessing, `data/preprocess.py`), how it is read."""
  SECTION: ClassVar[str] = 'data'
  name: str = 'tfds:imagenet2012'       # | 'synthetic' | 'folder' | 'tfds:NAME'
  data_dir: str = ''                    # TFDS data directory ('': TFDS's default)
  path: str = ''                        # folder: ROOT/{train,validation}/<class>/*
  train_split: str = 'train'
  eval_split: str = 'validation'
  image_size: int = 299                 # the network's input
  num_classes: int = 10                 # synthetic only
  num_train: int = 4096                 # synthetic only
  num_eval: int = 500                   # synthetic only
  object_size: tuple[float, float] = (0.16, 0.26)   # synthetic: radius / image size
  crop_sampler: str = 'tensorflow'      # | 'uniform_area'
  crop_area_min: float = 0.05
  crop_attempts: int = 100
  min_object_covered: float = 0.1
  color_distort: str = 'inception'      # | 'none'
  eval_central_fraction: float = 0.875
  eval_exclude: str = ''                # a file of validation images to leave out
  skip_corrupt: bool = False
  num_workers: int = 0                  # Grain worker processes (0: threads only)
  num_threads: int = 8                  # reader threads per process
  prefetch: int = 256                   # examples read ahead


@dataclasses.dataclass(frozen=True)
class OptimSpec(_Section):
  """`config.optim`: the paper's RMSProp (ε 1.0), rate 0.045 × 0.94 every two
  epochs, clipping at 2.0, weight decay 4e-5 and the EMA of the weights
  (inception_jax/optim.py)."""
  SECTION: ClassVar[str] = 'optim'
  name: str = 'rmsprop'                 # | 'momentum' (Table 3's first row)
  learning_rate: float = 0.045
  decay_epochs: float = 2.0
  decay_rate: float = 0.94
  rms_decay: float = 0.9
  epsilon: float = 1.0
  momentum: float = 0.9
  grad_clip_norm: float = 2.0           # 0: no clipping
  weight_decay: float = 4e-5
  ema_decay: float = 0.9999
  warmup_epochs: float = 0.0            # linear warm-up (not in the paper)
  base_batch_size: int = 1600           # > 0: lr × batch_size / base_batch_size
  grad_accum_steps: int = 0             # micro-batches a step; 0: the fewest that fit


@dataclasses.dataclass(frozen=True)
class LossSpec(_Section):
  """`config.loss`: label smoothing (Section 7) and the auxiliary head's weight."""
  SECTION: ClassVar[str] = 'loss'
  label_smoothing: float = 0.1
  aux_weight: float = 0.4


@dataclasses.dataclass(frozen=True)
class TrackingSpec(_Section):
  """`config.tracking`: the metric writers (inception_jax/tracking.py) and the
  names a sweep gives each of its runs."""
  SECTION: ClassVar[str] = 'tracking'
  tensorboard: bool = True
  wandb: bool = True                    # when installed
  wandb_mode: str = 'offline'           # | 'online' | 'disabled' (WANDB_MODE overrides)
  wandb_init_timeout: float = 30.0      # seconds; then the run goes on without wandb
  wandb_project: str = 'inception_jax'
  wandb_group: str = ''                 # a sweep's name
  run_name: str = ''                    # '': the run directory's name
  job_type: str = ''                    # a sweep's row
  tags: tuple[str, ...] = ()            # the key=value pairs a sweep's row changes
  hparams_first: tuple[str, ...] = ()   # the keys a sweep varies (HParams' first columns)
  progress: bool = True                 # a progress bar on a terminal

  def __post_init__(self):
    super().__post_init__()
    tracking.check_mode('tracking.wandb_mode', self.wandb_mode)


@dataclasses.dataclass(frozen=True)
class SlurmSpec(_Section):
  """`config.slurm`: a SLURM job's resources (0 or '': the cluster's default)."""
  SECTION: ClassVar[str] = 'slurm'
  partition: str = ''
  nodes: int = 1
  tasks_per_node: int = 1
  gpus_per_node: int = 8
  cpus_per_task: int = 16
  mem_gb: int = 0
  time_minutes: int = 72 * 60


def _paper_model() -> models.InceptionSpec:
  """Inception-v3 with the paper's 50 replicas' BatchNorm: statistics per 32
  examples, moving averages updated per group; bfloat16 on accelerators."""
  return models.InceptionSpec(bn_group_size=32, bn_update_per_group=True, dtype='auto')


# The nested sections, by key.
SECTIONS = {'data': DataSpec, 'optim': OptimSpec, 'loss': LossSpec,
            'tracking': TrackingSpec, 'slurm': SlurmSpec}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A whole run: the top-level keys and the sections. `from_config` makes
  one from a config (ConfigDict or nested dict), `to_dict` gives the plain
  nested dict back (config.json, TensorBoard's HParams, wandb)."""
  # The form of the config (`rundir.as_current` reads a run's recorded config
  # of an earlier form as this one).
  config_version: int = rundir.CONFIG_VERSION
  seed: int = 0
  model: models.InceptionSpec = dataclasses.field(default_factory=_paper_model)
  init_from: str = ''                   # trained weights to start from (transfer.py)
  freeze: str = ''                      # a regular expression: parameters kept fixed
  data: DataSpec = DataSpec()
  batch_size: int = 1600                # examples per optimizer step (50 replicas × 32)
  per_device_batch: int = 64            # images per device at a time (0: no limit)
  fit_batch: bool = True                # move the batch to whole BatchNorm groups per device
  num_epochs: float = 100.0
  total_steps: int = 0                  # > 0 overrides num_epochs
  log_every_steps: int = 100
  eval_every_steps: int = 10_000        # 0: at the end only
  checkpoint_every_steps: int = 1000    # 0: at the end (and on a signal) only
  keep_checkpoints: int = 3
  profile_steps: int = 0                # > 0: a jax.profiler trace of that many steps
  optim: OptimSpec = OptimSpec()
  loss: LossSpec = LossSpec()
  tracking: TrackingSpec = TrackingSpec()
  slurm: SlurmSpec = SlurmSpec()

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.name in SECTIONS:
        if not isinstance(value, SECTIONS[field.name]):
          raise ConfigError(f'{field.name} must be a {SECTIONS[field.name].__name__}, '
                            f'got {value!r}')
      elif field.name == 'model':
        if not isinstance(value, models.InceptionSpec):
          raise ConfigError(f'model must be a models.InceptionSpec, got {value!r}')
        # InceptionSpec checks its choices itself; the rules add types and ranges.
        _check('model', {f.name: getattr(value, f.name)
                         for f in dataclasses.fields(value)})
      else:
        _check(field.name, value)
    self._check_keys()

  def _check_keys(self) -> None:
    """What no single key's rule can say: how long to train, and the form of
    `init_from` and `freeze` (inception_jax/transfer.py)."""
    if self.total_steps == 0 and self.num_epochs <= 0:
      raise ConfigError('set total_steps > 0 or num_epochs > 0')
    if self.init_from:
      kind, _, where = self.init_from.partition(':')
      if kind not in INIT_FROM_KINDS or (kind != 'keras' and not where):
        raise ConfigError(f"init_from must be 'run:DIR', 'keras', 'keras:FILE', "
                          f"'tf_slim:CHECKPOINT' or 'torchvision:FILE'; got "
                          f'{self.init_from!r}')
    try:
      re.compile(self.freeze)
    except re.error as e:
      raise ConfigError(f'freeze is not a regular expression ({e}): '
                        f'{self.freeze!r}') from None

  def check_process(self) -> None:
    """What this process must provide to run the spec: 64-bit JAX for
    float64, and a WANDB_MODE (wandb's own variable) that names a mode."""
    if self.model.dtype == 'float64' and not jax.config.jax_enable_x64:
      raise ConfigError('model.dtype=float64 needs 64-bit JAX: set JAX_ENABLE_X64=1 '
                        'before starting (python -m inception_jax train does this itself)')
    if self.tracking.wandb:
      tracking.resolve_wandb_mode(self.tracking.wandb_mode)

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'RunSpec':
    """The spec of `config` (a ConfigDict or a nested mapping): each key a
    field, missing ones at their default, every value checked; an unknown key
    is a `ConfigError` naming it and the nearest known key."""
    values = _plain(config)
    _refuse_unknown(values)
    default = cls()
    kwargs = {}
    for name, value in values.items():
      if name in SECTIONS or name == 'model':
        if not isinstance(value, Mapping):
          raise ConfigError(f'{name} must be a section (a mapping of keys), got {value!r}')
        kwargs[name] = _section(name, getattr(default, name), value)
      else:
        kwargs[name] = value
    return cls(**kwargs)

  def to_dict(self) -> dict[str, Any]:
    """The plain nested dict (tuples stay tuples; `rundir` writes JSON lists)."""
    return dataclasses.asdict(self)

  def model_spec(self, dataset_classes: int | None = None) -> models.InceptionSpec:
    """`model`, its `num_classes` the dataset's when None (follow the dataset)."""
    return self.model.with_classes(dataset_classes)

  def with_batch(self, batch_size: int, grad_accum_steps: int) -> 'RunSpec':
    """This spec with the batch as a device count runs it (`parallel.resolve_batch`)."""
    return dataclasses.replace(self, batch_size=batch_size, optim=dataclasses.replace(
        self.optim, grad_accum_steps=grad_accum_steps))


def _section(name: str, default, given: Mapping[str, Any]):
  """Section `name` from `given`'s keys over `default`'s values. The model's
  values meet their rules before InceptionSpec checks its choices, so a wrong
  type is one line naming the key, not an exception from inside the check."""
  values = {**default.to_dict(), **given}
  if name == 'model':
    _check('model', given)
    blocks = given['blocks'] if 'blocks' in given else {}
    if not isinstance(blocks, Mapping):
      raise ConfigError(f'model.blocks must map the slots {sorted(models.DEFAULT_BLOCKS)} '
                        f'to block names, got {blocks!r}')
    values['blocks'] = {**default.blocks, **blocks}
  return type(default)(**values)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
  """A ConfigDict (placeholders resolved) or a nested mapping as nested dicts."""
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in config.items()}


def _keys(spec) -> list[str]:
  return [f.name for f in dataclasses.fields(spec)]


def known_keys() -> list[str]:
  """Every dotted key a config may hold: the specs' fields, with
  `model.blocks` as its slots (`model.blocks.grid_35`, ...)."""
  default = RunSpec()
  keys = []
  for name in _keys(default):
    section = getattr(default, name)
    if dataclasses.is_dataclass(section):
      keys += [f'{name}.{k}' for k in _keys(section) if f'{name}.{k}' != 'model.blocks']
    else:
      keys.append(name)
  return keys + [f'model.blocks.{slot}' for slot in models.DEFAULT_BLOCKS]


def _refuse_unknown(values: Mapping[str, Any]) -> None:
  """A key no spec has (a typo, or another project's config) is an error
  naming it and the nearest known key (`difflib`)."""
  known = known_keys()
  sections = {k.rsplit('.', 1)[0] for k in known if '.' in k}
  for key in _dotted(values, sections):
    if key not in known and key not in sections:
      candidates = known if '.' in key else [*known, *sections]
      near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
      hint = f"; did you mean '{near[0]}'?" if near else ''
      raise ConfigError(f"unknown config key '{key}'{hint}")


def _dotted(values: Mapping[str, Any], sections: set[str], prefix: str = ''):
  """The dotted keys of `values`, descending into the known sections only (a
  value of another key may be a mapping)."""
  for name, value in values.items():
    key = prefix + name
    if key in sections and isinstance(value, Mapping):
      yield from _dotted(value, sections, f'{key}.')
    else:
      yield key
